"""Output path templates: `{job}`, `{date}` and `{datetime}`, filled once per run.

The date and time are the local ones when the job was loaded (the run's start), so a run that crosses
midnight keeps one folder, and a rerun on the same day finds the same run folder and resumes it.
`{datetime}` (`2026-11-23T0930`, no colons: safe on every filesystem) gives every run its own folder, so
runs with it do not resume one another (except within the same minute).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

PLACEHOLDERS = ("job", "date", "datetime")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_template(text: str) -> str:
    """`text` if every `{name}` in it is a known placeholder; ValueError saying what to write otherwise."""
    for name in _FIELD.findall(text):
        if name == "variant":
            raise ValueError(
                "{variant} is not supported: a sweep writes one output file with a `variant` column "
                "(filter on it); use {job}, {date} or {datetime}"
            )
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
