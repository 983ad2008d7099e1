"""`batchrun validate JOB`: the checks a run makes before sending, and the first requests as they would go.

Nothing is sent and nothing is written: the job file is loaded, the input read whole and every row checked
(`batchrun.inputs.preflight`, as `run` does), then the first rows are rendered and encoded by the job's
provider adapter: the URL, the headers (the API key and other credentials shown as `***`) and the body
exactly as they would be sent. The built-in emulator is not started; its URL reads `http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchrun.inputs.preflight import preflight
from batchrun.job.schema import Job
from batchrun.providers import KINDS, make_provider
from batchrun.records import Request
from batchrun.redact import MASK, SECRET_HEADERS, redact, safe_url, secrets_of
from batchrun.store.mirror import shown

EMULATOR_URL = "http://127.0.0.1:PORT"  # the emulator's port is picked when a run starts it


@dataclass(frozen=True, slots=True)
class Sent:
    """One request as it would go on the wire."""

    custom_id: str
    url: str
    headers: dict[str, str]
    body: Any  # the JSON body, decoded

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return {"custom_id": self.custom_id, "url": self.url, "headers": self.headers, "body": self.body}


@dataclass(frozen=True, slots=True)
class Preview:
    """What `validate` found: the job, the input's rows, and the first requests."""

    job: Job
    rows: int
    bad: int
    on_bad_row: str
    requests: tuple[Sent, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        provider = self.job.provider
        return {
            "job": self.job.name,
            "input": str(self.job.input.path),
            "rows": self.rows,
            "bad_rows": self.bad,
            "on_bad_row": self.on_bad_row,
            "provider": {"kind": provider.kind, "base_url": _base_url(self.job), "model": provider.model},
            "output": shown(self.job.output_path),
            "requests": [r.as_dict() for r in self.requests],
        }

    def lines(self) -> list[str]:
        """The findings, then each request: its URL, headers and indented JSON body."""
        provider = self.job.provider
        bad = f"; {self.bad:,} cannot be sent (on_bad_row = {self.on_bad_row!r})" if self.bad else ""
        key = provider.api_key_env or "none"
        lines = [
            f"job:      {self.job.name} ({self.job.source})",
            f"input:    {self.job.input.path}: {self.rows:,} rows read and checked{bad}",
            f"provider: {provider.kind} at {_base_url(self.job)}, model {provider.model}, key from {key}",
            f"output:   {shown(self.job.output_path)}",
            "ok: nothing found that would stop a run before its first request.",
        ]
        for sent in self.requests:
            lines += ["", f"request {sent.custom_id}:", f"  POST {sent.url}"]
            lines += [f"  {name}: {value}" for name, value in sent.headers.items()]
            body = json.dumps(sent.body, indent=2, ensure_ascii=False)
            lines += ["  " + line for line in body.splitlines()]
        return lines


def preview(job: Job, *, limit: int | None = None, show: int = 3) -> Preview:
    """Check `job` as a run would before sending (raises on a problem); render its first `show` requests."""
    checked = preflight(job, limit=limit)
    provider = job.provider
    base_url = provider.base_url or EMULATOR_URL + KINDS[provider.kind].emulator_path
    adapter = make_provider(provider.kind, base_url, checked.key, provider.headers, provider.auth)
    secrets = secrets_of(checked.key, provider.base_url, provider.headers)
    requests: list[Sent] = []
    for piece in checked.prompts.slices():
        for item in piece.items:
            if isinstance(item, Request):
                requests.append(_sent(adapter.url(), adapter.headers(), adapter.content(item), item, secrets))
            if len(requests) >= show:
                break
        if len(requests) >= show:
            break
    report = checked.input
    return Preview(job, report.rows, report.bad, report.on_bad_row, tuple(requests))


def _sent(
    url: str, headers: dict[str, str], content: bytes, request: Request, secrets: tuple[str, ...]
) -> Sent:
    shown = {
        name: MASK if name.lower() in SECRET_HEADERS else redact(value, secrets)
        for name, value in headers.items()
    }
    body = json.loads(redact(content.decode("utf-8", "replace"), secrets))
    return Sent(request.custom_id, safe_url(url), shown, body)


def _base_url(job: Job) -> str:
    if job.provider.base_url is None:
        return f"the built-in emulator ({EMULATOR_URL})"
    return safe_url(job.provider.base_url)
