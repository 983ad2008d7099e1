"""Shards: one job split across N independent runs (`batchrun run JOB --shard I/N`), for any scheduler.

Kubernetes indexed jobs, Slurm arrays and cron on N hosts each start the same command with their own index.
Shard I of N takes the rows whose `custom_id` hashes to I (so the split is stable when rows move, as the
`custom_id` is with an `[input] id_column`), and keeps its own output, journal, summary and log beside the
job's (`out/x.parquet` -> `out/x.shard-I-of-N.parquet`). I counts from 0, as Kubernetes'
`JOB_COMPLETION_INDEX` does; `--shard JOB_COMPLETION_INDEX/4` reads I from that environment variable (any
variable name works: `SLURM_ARRAY_TASK_ID`).

The shards share the provider's limits and the budget: each runs at 1/N of `requests_per_minute` and
`tokens_per_minute` unless told the shards have limits of their own (`--shard-limits whole`, e.g. one API key
per shard), and with 1/N of `max_cost_usd` always (a shard cannot see what the others spend).
`batchrun merge JOB` (`batchrun.store.merge`) then writes the job's one output from the shards' outputs.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from batchrun.errors import UsageError

if TYPE_CHECKING:
    from batchrun.job.schema import Job

MAX_SHARDS = 100_000
_SPEC = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*|\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard `index` (from 0) of `count`: the rows whose `custom_id` hashes to `index`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= I < N <= {MAX_SHARDS:,}")

    @property
    def name(self) -> str:
        """`shard-1-of-4`: what goes into its file names."""
        return f"shard-{self.index}-of-{self.count}"

    def holds(self, custom_id: str) -> bool:
        """True when the row with `custom_id` belongs to this shard."""
        return shard_of(custom_id, self.count) == self.index

    def path(self, output: Path) -> Path:
        """This shard's output beside the job's: `out/x.parquet` -> `out/x.shard-1-of-4.parquet`."""
        return output.with_name(f"{output.stem}.{self.name}{output.suffix}")


def shard_of(custom_id: str, count: int) -> int:
    """The shard (of `count`) a `custom_id` falls in: a stable hash, the same on every host and Python."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def parse_shard(spec: str, environ: Mapping[str, str]) -> Shard:
    """`I/N` from the command line; I is a number or the name of an environment variable holding one.

    UsageError (exit 2) naming the flag or the variable when it is not a shard.
    """
    match = _SPEC.match(spec)
    if match is None:
        raise UsageError(
            f"--shard {spec!r}: expected I/N (I counts from 0), e.g. --shard 0/4, or "
            "--shard JOB_COMPLETION_INDEX/4 to read I from that environment variable"
        )
    first, count = match.group(1), int(match.group(2))
    if first.isdigit():
        text, where = first, f"--shard {spec}"
    else:
        value = environ.get(first)
        if value is None or not value.strip():
            raise UsageError(
                f"--shard {spec}: the environment variable {first} is not set (a Kubernetes indexed job "
                "sets JOB_COMPLETION_INDEX; elsewhere give the index as a number)"
            )
        text, where = value.strip(), f"--shard {spec}: {first}={value.strip()[:20]!r}"
        if not text.isdigit():
            raise UsageError(f"{where} is not a whole number")
    index = int(text)
    if count < 1 or count > MAX_SHARDS:
        raise UsageError(f"{where}: N must be between 1 and {MAX_SHARDS:,}")
    if index >= count:
        raise UsageError(f"{where}: I counts from 0, so it must be below N (0 to {count - 1})")
    return Shard(index, count)


def shard_job(job: Job, shard: Shard, *, divide_limits: bool = True) -> Job:
    """`job` as shard `shard` runs it: its own output, its share of the rate limits and of the budget."""
    limits = job.limits
    changes: dict[str, float | None] = {}
    if divide_limits:
        for key in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(limits, key)
            if value is not None:
                changes[key] = value / shard.count
    if limits.max_cost_usd is not None:
        changes["max_cost_usd"] = limits.max_cost_usd / shard.count
    output = job.output.model_copy(update={"path": shard.path(job.output.path)})
    limits = limits.model_copy(update=changes)
    return job.model_copy(update={"limits": limits, "output": output, "shard": shard})


def shard_name(output: Path) -> re.Pattern[str]:
    """The file names of `output`'s shard outputs; groups: the shard's index, the shard count."""
    return re.compile(re.escape(output.stem) + r"\.shard-(\d+)-of-(\d+)" + re.escape(output.suffix))


def shard_outputs(output: Path) -> dict[int, dict[int, Path]]:
    """The shard outputs found beside `output`, by shard count, then by index."""
    name = shard_name(output)
    found: dict[int, dict[int, Path]] = {}
    if not output.parent.is_dir():
        return found
    for path in output.parent.glob(f"{glob.escape(output.stem)}.shard-*-of-*{glob.escape(output.suffix)}"):
        match = name.fullmatch(path.name)
        if match is not None and int(match.group(1)) < int(match.group(2)):
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    return found
