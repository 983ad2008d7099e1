"""Loading a job file (Contract 1): TOML read, `--set` overrides, presets and paths, then validated
against `batchrun.job.schema`.

A job file is TOML. Paths inside it are relative to the job file's own folder, so cron can run it from
anywhere; paths given on the command line (`--input`, `--output`, `--set input.path=...`) are relative to
the working directory. Everything is validated once, here, before a single request is sent.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from batchrun.errors import JobFileError
from batchrun.inputs import wire
from batchrun.job.envvars import check_no_keys, expand_env
from batchrun.job.schema import Job, OutputSection
from batchrun.providers.presets import PRESETS
from batchrun.store import mirror

# Keys whose values are file paths: resolved against the job file's folder or the working directory.
PATH_KEYS = (("input", "path"), ("output", "path"), ("cache", "path"))


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
        raise JobFileError(path, format_validation_error(exc)) from None
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


def format_validation_error(exc: ValidationError) -> str:
    """A job's validation errors as the message a user reads: a line per problem, naming its key."""
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
