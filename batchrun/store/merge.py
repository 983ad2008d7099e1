"""`batchrun merge JOB`: the job's one output from the outputs of its shards (`batchrun.job.shards`).

Each shard's output holds its own rows in the order a single run would give them. The input is read and
rendered again (as a run does, sending nothing), which gives every row's `custom_id` in the single run's
output order; each `custom_id` names its shard, so the rows are taken from the shards' outputs in turn, a
piece at a time, and written out: the same file, row for row and column for column, as one run of the whole
job. Every row taken is checked against the `custom_id` expected there, so a shard run with another input,
job or `--limit` stops the merge (exit 2) instead of mixing rows. Memory holds one piece of each shard.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.errors import StopRun, UsageError
from batchrun.inputs.validate import check_input
from batchrun.job.shards import Shard, shard_name, shard_of, shard_outputs
from batchrun.job.sweep import SweepPromptSet, prompt_set
from batchrun.redact import first_line
from batchrun.report.summary import Summary, summarize, summary_path, write_summary_json
from batchrun.store.mirror import url_of
from batchrun.store.output_writer import LONG_TEXT
from batchrun.store.remote import Remote
from batchrun.store.runstore import publish, run_folder, run_lock

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batchrun.inputs.prompts import PromptSet
    from batchrun.job.schema import Job

WRITE_ROWS = 10_000  # rows gathered into one row group of the merged output
READ_ROWS = 8_192  # rows read from a shard's output at a time


def merge_shards(job: Job, *, count: int | None = None, limit: int | None = None) -> Summary:
    """Write `job`'s output from its `count` shards' outputs (found beside it); return its summary.

    `count` None: the one shard count found. UsageError (exit 2) when a shard's output is missing (named),
    a shard still runs, or a shard's rows do not match the input. `limit` must be the shards' `--limit`.
    """
    output = job.output_path
    url = url_of(output)
    remote = Remote(output, url) if url is not None else None  # an output on an object store
    with contextlib.ExitStack() as locks:
        locks.enter_context(run_lock(output))  # no run of the whole job writes the output meanwhile
        if remote is not None:
            _fetch_shards(remote)
        shards = find_shards(output, count)
        for path in shards:
            if run_folder(path).is_dir():  # a shard's output copied from elsewhere may come without it
                locks.enter_context(run_lock(path))
        prompts = prompt_set(job, limit=limit)
        check_input(prompts).enforce()
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            _write(prompts, shards, tmp)
            publish(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    summary = summarize(output, job=job.name, note=f"merged from {len(shards)} shards")
    write_summary_json(summary_path(output), summary.as_dict() | {"shards": len(shards)})
    if remote is not None:
        _send_up(remote)
    return summary


def _fetch_shards(remote: Remote) -> None:
    """Download the shard outputs beside a remote output into its mirror; UsageError naming a shard
    whose run still holds its remote lock."""
    names = shard_name(remote.output)
    try:
        for name in remote.names_beside():
            if names.fullmatch(name) is None:
                continue
            shard = remote.sibling(name)
            running = shard.lock.running_elsewhere()
            if running is not None:
                raise UsageError(
                    f"{shard.url} is still being written by a run on {running}: merge after it ends"
                )
            shard.download(shard.path, shard.output)
    except OSError as exc:
        raise UsageError(
            f"cannot read the shard outputs beside {remote.url}: {first_line(exc, 300)}"
        ) from None


def _send_up(remote: Remote) -> None:
    """Upload the merged output and its summary; StopRun (exit 3) when the store refuses them."""
    output = remote.output
    try:
        remote.send_beside(output, summary_path(output))
    except OSError as exc:
        raise StopRun(
            f"cannot send the merged output to {remote.url}: {first_line(exc, 300)}; it is in {output}"
        ) from None


def find_shards(output: Path, count: int | None) -> list[Path]:
    """The shard outputs of `output`, in shard order; UsageError naming what is missing."""
    found = shard_outputs(output)
    if count is None:
        if not found:
            example = Shard(0, 4).path(output).name
            raise UsageError(
                f"no shard outputs beside {output} (such as {example}): run `batchrun run JOB --shard I/N` "
                "for every I from 0 to N-1 first"
            )
        if len(found) > 1:
            counts = ", ".join(str(n) for n in sorted(found))
            raise UsageError(
                f"shard outputs of {output} for several shard counts ({counts}): pass --shards N"
            )
        (count,) = found
    paths = found.get(count, {})
    missing = [Shard(i, count) for i in range(count) if i not in paths]
    if missing:
        names = "\n  ".join(f"{s.path(output)} (shard {s.index} of {count})" for s in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UsageError(
            f"{len(missing)} of {count} shard outputs are missing:\n  {names}{more}\n"
            f"Run `batchrun run JOB --shard I/{count}` for each, then merge again."
        )
    return [paths[i] for i in range(count)]


def output_order(prompts: PromptSet) -> Iterator[list[str]]:
    """The `custom_id`s of the job's output rows in output order, a rendered piece at a time.

    A sweep's output holds its variants one after another (the run folder's input parts sort by variant),
    so a sweep is rendered once per variant.
    """
    if isinstance(prompts, SweepPromptSet):
        for variant in prompts.sets:
            for batch in prompts.batches():
                for piece in variant.render_batch(batch):
                    yield piece.frame.get_column("custom_id").to_list()
        return
    for piece in prompts.slices():
        yield piece.frame.get_column("custom_id").to_list()


def _write(prompts: PromptSet, shards: list[Path], tmp: Path) -> None:
    """Write the merged output to `tmp`, taking each row from its shard in output order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    readers = [_ShardRows(path) for path in shards]
    schema = _schema([reader.file for reader in readers])
    dictionary = [name for name in schema.names if name not in LONG_TEXT]
    held: list[pa.Table] = []
    held_rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=dictionary) as writer:
        for ids in output_order(prompts):
            held.append(_gather(ids, readers, schema))
            held_rows += len(ids)
            if held_rows >= WRITE_ROWS:
                writer.write_table(pa.concat_tables(held))
                held, held_rows = [], 0
        if held:
            writer.write_table(pa.concat_tables(held))
    for reader in readers:
        if reader.take(1).num_rows:
            raise _mismatch(reader.path, f"holds more rows than the input gives it ({reader.taken:,})")


def _gather(ids: list[str], readers: list[_ShardRows], schema: pa.Schema) -> pa.Table:
    """The rows `ids` (in that order) from their shards' outputs."""
    import pyarrow as pa

    count = len(readers)
    which = [shard_of(custom_id, count) for custom_id in ids]
    wanted = Counter(which)
    order = sorted(wanted)
    tables = [readers[s].take(wanted[s]).select(schema.names).cast(schema) for s in order]
    start, at = {}, 0
    for s, table in zip(order, tables, strict=True):
        if table.num_rows < wanted[s]:
            raise _mismatch(readers[s].path, f"ends after {readers[s].taken:,} rows, before the input does")
        start[s] = at
        at += table.num_rows
    positions = []
    for s in which:
        positions.append(start[s])
        start[s] += 1
    if not tables:
        return schema.empty_table()
    merged = pa.concat_tables(tables).take(pa.array(positions, pa.int64()))
    found = merged.column("custom_id").to_pylist()
    if found != ids:
        row = next(i for i, (a, b) in enumerate(zip(found, ids, strict=True)) if a != b)
        reader = readers[which[row]]
        raise _mismatch(reader.path, f"holds custom_id {found[row]!r} where the input gives {ids[row]!r}")
    return merged


def _schema(files: list[pq.ParquetFile]) -> pa.Schema:
    """The merged output's schema: the shards' (a shard without rows has no input columns to offer)."""
    import pyarrow as pa

    schemas = [file.schema_arrow for file in files if file.metadata.num_rows] or [files[0].schema_arrow]
    return pa.unify_schemas(schemas, promote_options="permissive")


def _mismatch(path: Path, what: str) -> UsageError:
    return UsageError(
        f"{path} {what}: that shard was run with another input, job, --set or --limit. Merge with the "
        "options the shards ran with, or run the shard again with the job's options now."
    )


class _ShardRows:
    """One shard's output, read in order, a given number of rows at a time."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: cannot read it as Parquet ({exc}); run that shard again") from None
        if "custom_id" not in self.file.schema_arrow.names:
            raise UsageError(f"{path}: not a batchrun output (no custom_id column)")
        self._batches = self.file.iter_batches(READ_ROWS)
        self._held: list[pa.RecordBatch] = []
        self._held_rows = 0
        self.taken = 0

    def take(self, count: int) -> pa.Table:
        """The next `count` rows (fewer only where the file ends)."""
        import pyarrow as pa

        while self._held_rows < count and (batch := next(self._batches, None)) is not None:
            self._held.append(batch)
            self._held_rows += batch.num_rows
        table = pa.Table.from_batches(self._held, schema=self.file.schema_arrow)
        taken, rest = table.slice(0, count), table.slice(count)
        self._held, self._held_rows = rest.to_batches(), rest.num_rows
        self.taken += taken.num_rows
        return taken
