"""The job file (Contract 1): its sections and keys, each checked as it is read.

`batchrun.job.loader` reads a job file, applies `--set` overrides, presets and paths, and validates it
against these models once, before a single request is sent.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchrun.inputs import wire
from batchrun.job import matrix, paths
from batchrun.job.shards import Shard
from batchrun.providers import KINDS
from batchrun.providers.headers import parse_duration
from batchrun.store import mirror


class _Section(BaseModel):
    # coerce_numbers_to_str: `--set provider.model=123` parses as a TOML number but means a name.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class InputSection(_Section):
    """`[input]`: the prompt set."""

    path: Path
    id_column: str | None = None
    # A row that cannot be sent (a line that does not parse, a null in a template column, a value a provider
    # cannot take): "fail" stops the run before it sends anything, naming the rows; "skip" leaves such rows
    # out of the run and the output; "error" writes each as an error row (error_type = "invalid_input").
    on_bad_row: Literal["fail", "skip", "error"] = "fail"


class PromptSection(_Section):
    """`[prompt]`: how a row becomes messages. Neither template nor messages_column: OpenAI batch lines."""

    system: str | None = None
    template: str | None = None
    messages_column: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptSection:
        if self.template is not None and self.messages_column is not None:
            raise ValueError("set either template or messages_column, not both")
        for key in ("system", "template"):
            text = getattr(self, key)
            if text is not None and not wire.is_utf8(text):
                raise ValueError(f"{key} holds bytes that are not UTF-8 text (from the command line?)")
        return self


class ProviderSection(_Section):
    """`[provider]`: where requests go. A preset fills kind, base_url and api_key_env."""

    preset: str | None = None
    kind: str = "openai"  # a key of batchrun.providers.KINDS
    base_url: str | None = None
    auth: Literal["bearer", "x-api-key"] | None = None  # how the key is sent; None: the kind's usual way
    api_key_env: str | None = None
    api_key_required: bool = True
    model: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}")
        return kind

    @field_validator("headers")
    @classmethod
    def _single_line_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if any(c in f"{name}{value}" for c in "\r\n\0"):
                raise ValueError(f"header {name!r} holds a line break or NUL; a header is one line")
            if not f"{name}{value}".isascii():
                raise ValueError(f"header {name!r} holds a character that is not ASCII; HTTP cannot send it")
        return headers

    @model_validator(mode="after")
    def _has_endpoint(self) -> ProviderSection:
        if self.base_url is None and self.preset != "emulator":
            raise ValueError("set preset (see `batchrun providers`) or base_url")
        return self


class LimitsSection(_Section):
    """`[limits]`: concurrency, rate limits, retries and timeouts."""

    concurrency: int = Field(default=32, ge=1, le=8192)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_attempts: int = Field(default=6, ge=1, le=100)
    timeout_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    backoff_base_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    max_cost_usd: float | None = Field(default=None, gt=0)
    adaptive: bool = True  # learn concurrency and rate from 429s when no rate limit is configured
    max_outage_s: float = Field(default=1800.0, gt=0)  # give up (exit 3) when the provider is down this long
    # JSON mode (`response_format`): send a row again while its completion does not parse (max_attempts).
    retry_invalid_json: bool = False
    # A reply larger than this (decoded) is no completion: that attempt fails as `bad_response`.
    max_reply_mib: float = Field(default=64.0, gt=0, le=4096)


class PricingSection(_Section):
    """`[pricing]`: USD per 1M tokens; overrides the built-in price table."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    batch_discount: float = Field(default=0.5, gt=0, le=1)  # the share of the price a Batch API charges


_WINDOW = re.compile(r"^[1-9][0-9]*h$")


class BatchSection(_Section):
    """`[batch]`: send the rows through the provider's Batch API (half price, answers within a window)."""

    enabled: bool = False
    completion_window: str = "24h"  # OpenAI takes only "24h"; DashScope "24h" to "336h"
    poll_interval_s: float = Field(default=60.0, gt=0)  # the first polls come sooner
    max_requests_per_file: int | None = Field(default=None, ge=1)  # default: the provider's limit
    max_bytes_per_file: int | None = Field(default=None, ge=1024)  # default: the provider's, less 5%
    live_after: str | None = None  # e.g. "6h": past it, what batches still hold is cancelled and sent live
    wait: bool = True  # false: submit, or collect what is ready, then exit 3 with the rows still pending

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _WINDOW.match(value):
            raise ValueError(f'must be a number of hours such as "24h", got {value!r}')
        return value

    @field_validator("live_after")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not parse_duration(value):
            raise ValueError(f'must be a duration such as "6h", "90m" or "1h30m", got {value!r}')
        return value

    @property
    def live_after_s(self) -> float | None:
        """`live_after` in seconds."""
        return parse_duration(self.live_after) if self.live_after is not None else None


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/batchrun`, else `~/.cache/batchrun`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchrun"


class CacheSection(_Section):
    """`[cache]`: opt-in response cache shared across jobs (answers only, never errors)."""

    enabled: bool = False
    path: Path = Field(default_factory=default_cache_dir)


class OutputSection(_Section):
    """`[output]`: where the result Parquet goes; `{job}`, `{date}` and `{datetime}` are filled per run."""

    path: Path = Path("out/{job}.parquet")

    @field_validator("path")
    @classmethod
    def _known_placeholders(cls, value: Path) -> Path:
        paths.check_template(str(value))
        return value


class EngineSection(_Section):
    """`[engine]`: what sends the requests: this process (`local`) or workers on a Ray cluster (`ray`)."""

    kind: Literal["local", "ray"] = "local"
    workers: int | None = Field(default=None, ge=1, le=4096)  # Ray's sending processes; None: its CPUs
    address: str | None = None  # Ray: None starts a local one; "auto" (or "ray://head:10001") joins one


class Job(_Section):
    """A validated job: every section present, defaults filled, paths absolute."""

    name: str = Field(min_length=1)
    input: InputSection
    prompt: PromptSection = PromptSection()
    provider: ProviderSection
    params: dict[str, Any] = Field(default_factory=dict)
    limits: LimitsSection = LimitsSection()
    pricing: PricingSection = PricingSection()
    cache: CacheSection = CacheSection()
    output: OutputSection = OutputSection()
    batch: BatchSection = BatchSection()
    matrix: dict[str, list[Any]] = Field(default_factory=dict)  # a sweep: see batchrun.job.matrix
    engine: EngineSection = EngineSection()
    source: Path | None = Field(default=None, exclude=True)
    # The run's start: fills {date} and {datetime}. `--set started=2026-11-22` resumes or backfills that day.
    started: datetime = Field(default_factory=datetime.now, exclude=True)
    shard: Shard | None = Field(default=None, exclude=True)  # `--shard I/N`: see batchrun.job.shards

    @field_validator("matrix", mode="before")
    @classmethod
    def _flat_matrix(cls, value: Any) -> dict[str, list[Any]]:
        return matrix.normalize(value)

    @field_validator("params")
    @classmethod
    def _params_for_kind(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # The wire format checks (and may complete) its parameters; it needs the kind and the input style.
        provider, prompt = info.data.get("provider"), info.data.get("prompt")
        if provider is None or prompt is None:
            return params  # those sections failed validation and are reported already
        batch_lines = prompt.template is None and prompt.messages_column is None
        params = KINDS[provider.kind].normalize_params(params, batch_lines=batch_lines)
        problem = wire.params_problem(params)
        if problem is not None:
            raise ValueError(f"[params] {problem}")
        return params

    @model_validator(mode="after")
    def _check_params(self) -> Job:
        for key in ("model", "messages"):
            if key in self.params:
                where = "[provider] model" if key == "model" else "[prompt]"
                raise ValueError(f"params.{key} is not allowed: set it in {where}")
        uses_prompt = self.prompt.template is not None or self.prompt.messages_column is not None
        if uses_prompt and not self.provider.model and "provider.model" not in self.matrix:
            raise ValueError("[provider] model is required (the request's model)")
        if paths.VARIANT in str(self.output.path) and not self.matrix:
            raise ValueError("output.path: {variant} names a sweep's variant; this job has no [matrix]")
        if self.batch.enabled and self.engine.kind != "local":
            # The provider runs a batch: a cluster would only upload it. Say so rather than pick one.
            raise ValueError(
                '[batch] enabled needs no cluster (the provider runs the batch): set [engine] kind = "local"'
            )
        if self.batch.enabled and mirror.url_of(self.output.path) is not None:
            # The batch records (which rows are in which provider batch) are not kept in step with a store:
            # a rerun elsewhere would not know the batches in flight, and could pay for their rows twice.
            raise ValueError(
                "[batch] enabled keeps its batch records in the run folder, which is not sent to an object "
                "store: give [output] path a local (or shared) path"
            )
        return self

    @property
    def output_path(self) -> Path:
        """The output file, with `{job}`, `{date}` and `{datetime}` filled in (as of the run's start).

        A sweep split by `{variant}` has one output per variant: see `batchrun.job.sweep.split`.
        """
        return paths.fill(self.output.path, job=self.name, started=self.started)
