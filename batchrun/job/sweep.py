"""Sweeps: every input row runs once per combination of the job's `[matrix]` values.

A sweep is one run: one journal, one limiter, one output file (or, with `{variant}` in the output path,
one plain run per variant: `split`). Each combination (a *variant*) is the job
with its swept keys set, validated like any job. The input is read once, a slice at a time, and each slice
is rendered and sent once per variant before the next variant's copy is rendered, so memory stays flat.
Slices shrink as variants are added, so the variants progress together: a sweep stopped halfway (a budget,
an interrupt) has about as many rows of each variant to compare.

In the output every variant's rows appear together, in input order, variants in matrix order (the first
key varying slowest). The columns `variant` (its name) and `sweep_<key>` (one per swept key) sit after the
input's columns. The `custom_id` of a row already differs per variant (it hashes the rendered request, which
holds the model and params), so resume and the response cache work per variant: adding a value to the
matrix sends only the new variant's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from batchrun.errors import JobFileError
from batchrun.inputs.prompts import SLICE_ROWS, PromptSet, Slice
from batchrun.inputs.readers import Batch
from batchrun.job import paths
from batchrun.job.loader import format_validation_error
from batchrun.job.matrix import Axis, axes, combinations
from batchrun.job.schema import Job

if TYPE_CHECKING:
    import polars as pl

MIN_SLICE_ROWS = 500
_DTYPES = {"int": "Int64", "float": "Float64", "bool": "Boolean", "str": "String"}


@dataclass(frozen=True, slots=True)
class Variant:
    """One combination of a sweep: its position, its name, and the job with its values set."""

    index: int
    name: str
    values: tuple[Any, ...]  # one per axis, in the order of `axes(job.matrix)`
    job: Job


def variants(job: Job) -> list[Variant]:
    """The job's variants; JobFileError (naming the file and the swept key) when one does not validate."""
    where = job.source or job.name
    swept = axes(job.matrix)
    base = job.model_dump()
    base["matrix"] = {}
    result = []
    for combo in combinations(job.matrix):
        data = {section: dict(value) if isinstance(value, dict) else value for section, value in base.items()}
        for axis, value in zip(swept, combo.values, strict=True):
            section, _, key = axis.key.partition(".")
            data[section][key] = value
        data["output"]["path"] = paths.fill_variant(str(data["output"]["path"]), combo.name)
        try:
            variant_job = Job.model_validate(
                {**data, "source": job.source, "started": job.started, "shard": job.shard}
            )
        except ValidationError as exc:
            message = format_validation_error(exc).removeprefix("invalid job file:\n  ")
            raise JobFileError(where, f"variant {combo.name}: {message}", key="matrix") from None
        prompt = variant_job.prompt
        if prompt.template is None and prompt.messages_column is None:
            raise JobFileError(
                where,
                "a sweep needs [prompt] template or messages_column: OpenAI batch lines carry their own "
                "custom_id, which cannot tell variants apart",
                key="matrix",
            )
        result.append(Variant(combo.index, combo.name, combo.values, variant_job))
    return result


def split(job: Job) -> list[Job]:
    """The jobs to run for `job`: itself, or one plain job per variant when its output path has `{variant}`.

    Split variants run one after another, each with its own output, journal, summary and log; a file per
    variant suits a pipeline that picks up each model's results on its own.
    """
    if paths.VARIANT not in str(job.output.path):
        return [job]
    return [variant.job for variant in variants(job)]


def request_models(job: Job) -> list[str | None]:
    """Every model the job's requests name: one, or one per swept model."""
    if not job.matrix:
        return [job.provider.model]
    return list(dict.fromkeys(v.job.provider.model for v in variants(job)))


def prompt_set(job: Job, *, limit: int | None = None) -> PromptSet:
    """The job's prompt set: a plain one, or a `SweepPromptSet` when the job has a `[matrix]`."""
    if job.matrix:
        return SweepPromptSet(job, limit=limit)
    return PromptSet(job, limit=limit)


class SweepPromptSet(PromptSet):
    """A prompt set whose every slice comes out once per variant, each with its `variant` columns.

    It reads the input as its first variant's prompt set (every variant reads the same input) and renders
    each slice with every variant's own prompt set.
    """

    def __init__(self, job: Job, *, limit: int | None = None) -> None:
        self.variants = variants(job)
        self.axes: list[Axis] = axes(job.matrix)
        slice_rows = max(MIN_SLICE_ROWS, SLICE_ROWS // len(self.variants))
        self.sets = [PromptSet(v.job, limit=limit, slice_rows=slice_rows) for v in self.variants]
        super().__init__(self.variants[0].job, limit=limit, slice_rows=slice_rows)
        self.sweep_columns = ["variant", *(axis.column for axis in self.axes)]

    def count_rows(self) -> int | None:
        """Rows to run: the input's, once per variant."""
        rows = super().count_rows()
        return None if rows is None else rows * len(self.variants)

    def render_batch(self, batch: Batch) -> Iterator[Slice]:
        """A batch of the input once per variant (variant after variant), labelled with its variant."""
        for variant, prompts in zip(self.variants, self.sets, strict=True):
            for piece in prompts.render_batch(batch):
                yield Slice(self._label(piece.frame, variant), piece.items, part=f"v{variant.index:04d}-")

    def _label(self, frame: pl.DataFrame, variant: Variant) -> pl.DataFrame:
        """The slice's columns with the variant's inserted before `custom_id`."""
        import polars as pl

        clash = {c: f"input_{c}" for c in frame.columns if c in self.sweep_columns}
        if clash:
            frame = frame.rename(clash)
        labels = [pl.lit(variant.name, dtype=pl.String).alias("variant")]
        for axis, value in zip(self.axes, variant.values, strict=True):
            dtype = getattr(pl, _DTYPES[axis.dtype])
            labels.append(pl.lit(axis.cell(value), dtype=dtype).alias(axis.column))
        return frame.select(pl.exclude("custom_id"), *labels, "custom_id")
