"""JSON mode: which requests ask for JSON, and the completion read as JSON for the output's `json` column.

The `json` column holds JSON text (the parsed completion re-encoded compactly), not a struct: replies to
one job need not share a shape, and a text column keeps the Parquet schema the same for every row and every
run. Read it with `pl.col("json").str.json_decode()`.
"""

from __future__ import annotations

import json
from typing import Any

from batchrun.errors import ErrorClass, ProviderError

JSON_FORMATS = frozenset({"json_object", "json_schema"})
INVALID_JSON = "invalid_json"
"""The `error_type` of a row whose completion does not parse as JSON."""


def wants_json(body: dict[str, Any]) -> bool:
    """True when the request's `response_format` asks for a JSON object or a JSON schema."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in JSON_FORMATS


def as_json(text: str | None) -> str | None:
    """The completion as compact JSON text; None when it is not JSON.

    A reply wrapped in a Markdown code fence (```json ... ```), as some models send even in JSON mode, is
    read without the fence.
    """
    if text is None:
        return None
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def invalid_json_error(text: str | None) -> ProviderError:
    """The retryable error raised for a non-JSON completion when the job retries those."""
    return ProviderError(
        invalid_json_message(text), error_type=INVALID_JSON, error_class=ErrorClass.RETRY, status=200
    )


def invalid_json_message(text: str | None) -> str:
    """What the row's `error` says when its completion is not JSON."""
    if text is None:
        return "the request asked for JSON (response_format) but the reply has no text"
    snippet = text[:80] + ("..." if len(text) > 80 else "")
    return f"the request asked for JSON (response_format) but the completion does not parse: {snippet!r}"
