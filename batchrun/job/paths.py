"""Output path templates: `{job}`, `{date}`, `{datetime}` and `{variant}`, filled once per run.

The date and time are the local ones when the job was loaded (the run's start), so a run that crosses
midnight keeps one folder, and a rerun on the same day finds the same run folder and resumes it.
`{datetime}` (`2026-11-23T0930`, no colons: safe on every filesystem) gives every run its own folder, so
runs with it do not resume one another (except within the same minute).

`{variant}` splits a sweep into one output per variant (see `batchrun.job.sweep.split`); it is filled with the
variant's name made safe for a file name (`model=qwen-max,temperature=0.7`).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

PLACEHOLDERS = ("job", "date", "datetime", "variant")
VARIANT = "{variant}"
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_template(text: str) -> str:
    """`text` if every `{name}` in it is a known placeholder; ValueError saying what to write otherwise."""
    for name in _FIELD.findall(text):
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {{{name}}}; use {known}")
    return text


def fill(template: Path, *, job: str, started: datetime) -> Path:
    """The path with its placeholders filled in."""
    values = {
        "job": job,
        "date": started.strftime("%Y-%m-%d"),
        "datetime": started.strftime("%Y-%m-%dT%H%M"),
    }
    return Path(_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), str(template)))


def fill_variant(template: str, variant: str) -> str:
    """`template` with `{variant}` replaced by the variant's name, safe in a file name."""
    return template.replace(VARIANT, re.sub(r"[^A-Za-z0-9._=,+-]", "_", variant))
