"""The job file (Contract 1): schema, loading, `--set` overrides and paths.

A job file is TOML. Paths inside it are relative to the job file's own folder, so cron can run it from
anywhere; paths given on the command line (`--input`, `--output`, `--set input.path=...`) are relative to
the working directory. Everything is validated once, here, before a single request is sent.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchrun.errors import JobFileError
from batchrun.inputs import wire
from batchrun.job import matrix, paths
from batchrun.job.envvars import check_no_keys, expand_env
from batchrun.job.shards import Shard
from batchrun.providers import KINDS
from batchrun.providers.headers import parse_duration
from batchrun.providers.presets import PRESETS
from batchrun.store import mirror

# Keys whose values are file paths: resolved against the job file's folder or the working directory.
PATH_KEYS = (("input", "path"), ("output", "path"), ("cache", "path"))


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


def load_job(
    path: Path | str,
    overrides: Sequence[str] = (),
    *,
    input_path: Path | str | None = None,
    output_path: Path | str | None = None,
    cwd: Path | None = None,
) -> Job:
    """Read, override and validate a job file; raise `JobFileError` naming the file and key on any problem.

    `overrides` are `section.key=value` strings (values parsed as TOML when they parse, else taken as text).
    """
    path = Path(path)
    cwd = cwd or Path.cwd()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobFileError(path, "no such job file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(path, f"cannot read the job file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobFileError(path, f"not valid TOML: {exc}") from None
    except RecursionError:  # tomllib reads nested arrays and tables by recursion
        raise JobFileError(path, "not valid TOML: nested too deep") from None

    env_used = expand_env(raw, path)
    _resolve_paths(raw, path.resolve().parent, path)
    raw.setdefault("name", path.stem)
    cli_values: dict[str, Any] = {}
    for item in overrides:
        key, value = _parse_override(path, item)
        cli_values[key] = value
    if input_path is not None:
        cli_values["input.path"] = str(input_path)
    if output_path is not None:
        cli_values["output.path"] = str(output_path)
    for key, value in cli_values.items():
        _set_dotted(raw, key, value, path)
        if tuple(key.split(".")) in PATH_KEYS:
            section, _, name = key.partition(".")
            _set_dotted(raw, key, _resolve_path(section, name, str(value), cwd, path), path)

    if "provider.preset" in cli_values:
        _drop_endpoint(raw, cli_values)
    _apply_preset(raw, path)
    if env_used:
        check_no_keys(env_used, _key_vars(raw), path)
    try:
        job = Job.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise JobFileError(path, _format_validation_error(exc)) from None
    if job.matrix:
        from batchrun.job.sweep import variants  # imports this module

        variants(job)  # validates every combination now, before anything is sent
    return job


def _key_vars(raw: dict[str, Any]) -> set[str]:
    """Variables that hold API keys: the job's `api_key_env` and every preset's."""
    names = {p.api_key_env for p in PRESETS.values() if p.api_key_env}
    provider = raw.get("provider")
    if isinstance(provider, dict) and isinstance(provider.get("api_key_env"), str):
        names.add(provider["api_key_env"])
    return names


def _drop_endpoint(raw: dict[str, Any], cli_values: dict[str, Any]) -> None:
    """A preset given with --set replaces the file's endpoint: its kind, base_url and key variable go.

    So `--set provider.preset=emulator` runs any job against the emulator, whatever the file names.
    """
    provider = raw.get("provider")
    if isinstance(provider, dict):
        for key in ("kind", "base_url", "api_key_env", "api_key_required"):
            if f"provider.{key}" not in cli_values:
                provider.pop(key, None)


def _resolve_paths(raw: dict[str, Any], base: Path, job_path: Path) -> None:
    for section, key in PATH_KEYS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str):
            table[key] = _resolve_path(section, key, table[key], base, job_path)
    raw.setdefault("output", {})
    if isinstance(raw["output"], dict):
        raw["output"].setdefault("path", str((base / OutputSection().path).resolve()))


def _resolve_path(section: str, key: str, value: str, base: Path, job_path: Path) -> str:
    """A path key's value made absolute against `base`; an output URL becomes its local mirror's path
    (`batchrun.store.mirror`), which stands for the URL wherever the job's output path is used."""
    if section == "output" and mirror.is_url(value):
        try:
            return str(mirror.mirror_of(value))
        except ValueError as exc:
            raise JobFileError(job_path, f"[output] path {value[:200]!r}: {exc}") from None
    return str((base / Path(value).expanduser()).resolve())


def _parse_override(job_path: Path, item: str) -> tuple[str, Any]:
    """`section.key=value`: the value as TOML; a bare word only for a key that takes text."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise JobFileError(job_path, f"--set {item!r}: expected section.key=value, e.g. limits.concurrency=8")
    try:
        return key, tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as exc:
        problem = str(exc)
    except RecursionError:
        problem = "nested too deep"
    wanted = _text_or_wanted(key)
    if wanted is None:
        return key, text  # a bare word such as `qwen-max` is meant as text
    section, _, name = key.partition(".")
    named = f"[{section}] {name}" if name else key
    raise JobFileError(
        job_path,
        f"--set {key}={text[:60]}: {named} takes {wanted}, and {text[:60]!r} is not a TOML value "
        f"({problem}); write a number, true or false, a [list], or text in quotes: --set '{key}=\"...\"'",
    )


def _text_or_wanted(dotted: str) -> str | None:
    """None when the key `dotted` takes text (or is unknown: validation names it), else what it takes."""
    parts = dotted.split(".")
    if parts[0] == "params":
        # Only a parameter whose type the wire formats fix has a type here; any other may be text.
        return wire.expected(parts[1]) if len(parts) == 2 and not wire.takes_text(parts[1]) else None
    if parts[0] == "matrix":
        return "a list of values"
    model: type[BaseModel] = Job
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if i == len(parts) - 2 and typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]  # a table of text, such as [provider.headers]
        elif i != len(parts) - 1:
            return None
        return None if _is_text_type(annotation) else _type_words(annotation)
    return None


def _is_text_type(annotation: Any) -> bool:
    """True for str, Path, a Literal of strings, or any of those or None."""
    if annotation in (str, Path):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in args)
    if args and origin is not dict and origin is not list:
        return any(_is_text_type(a) for a in args if a is not type(None))
    return False


def _type_words(annotation: Any) -> str:
    """What a field takes, in words, for an error message."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    words = {int: "a whole number", float: "a number", bool: "true or false", datetime: "a date"}
    return " or ".join(dict.fromkeys(words.get(a, "a TOML value") for a in args))


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, job_path: Path) -> None:
    parts = dotted.split(".")
    table = raw
    for i, part in enumerate(parts[:-1]):
        child = table.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise JobFileError(job_path, f"--set {dotted}: {where} is a value, not a table")
        table = child
    table[parts[-1]] = value


def _apply_preset(raw: dict[str, Any], job_path: Path) -> None:
    provider = raw.get("provider")
    if not isinstance(provider, dict) or "preset" not in provider:
        return
    name = provider["preset"]
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if preset is None:
        known = ", ".join(sorted(PRESETS))
        raise JobFileError(job_path, f"unknown preset {name!r}; known: {known}", key="provider.preset")
    # Keys the job sets win over the preset's.
    for key, value in preset.fields().items():
        provider.setdefault(key, value)


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        if len(loc) >= 2:
            where = f"[{loc[0]}] {'.'.join(loc[1:])}"
        elif loc:
            where = loc[0]
        else:
            where = "job"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the job file reference in the README)"
        elif err["type"] == "missing":
            message = "required key is missing"
        message = message.removeprefix("Value error, ")
        # A message that names its own key ("[params] max_tokens ...") needs no second name before it.
        lines.append(message if message.startswith(f"[{where}]") else f"{where}: {message}")
    return "invalid job file:\n  " + "\n  ".join(lines)
