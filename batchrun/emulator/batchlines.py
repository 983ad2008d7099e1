"""An OpenAI batch file's lines, in the emulator: the rules a file must keep (`check_file`), each request
answered by the same code as a live chat completion (`answer_line`), and the output and error lines that
OpenAI and DashScope write (`error_shape`: `error.code` or `error.error_code`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchrun.emulator.answers import answer
from batchrun.emulator.batchconfig import BatchConfig, ErrorShape
from batchrun.emulator.batchjobs import Line, draw_error
from batchrun.emulator.dialects import OPENAI
from batchrun.emulator.replies import ERROR_DIRECTIVE, BadRequest, error_body, wants_400

__all__ = ["MAX_LINES", "answer_line", "check_file", "not_run_line"]

MAX_LINES = 50_000
"""Requests per input file, as OpenAI and DashScope allow."""

_SERVER_ERROR = error_body("The server had an error processing this request (emulated).", "server_error")
_NOT_RUN = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request was not executed because the batch was cancelled.",
}


def _digest(data: bytes | str, size: int = 24) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:size]


def answer_line(line: dict[str, Any], config: BatchConfig, seed: int) -> Line:
    """One input line answered as a live request with the same body would be."""
    custom_id = line["custom_id"]
    raw = json.dumps(line["body"], separators=(",", ":")).encode()
    key = hashlib.sha256(raw).hexdigest()[:32]
    try:
        parsed = OPENAI.parse(raw)
    except BadRequest as exc:
        return _failure(
            custom_id, key, 400, OPENAI.error(400, str(exc), "invalid_request_error", exc.param), config
        )
    if wants_400(parsed.messages):
        return _failure(custom_id, key, 400, ERROR_DIRECTIVE, config)
    if draw_error(seed, key, config.line_error_rate):
        return _failure(custom_id, key, 500, _SERVER_ERROR, config)
    reply = OPENAI.reply(
        key, parsed, answer(key, parsed.model, parsed.messages, parsed.limit, parsed.options)
    )
    return Line(custom_id, True, _output_line(custom_id, key, 200, reply, None))


def _failure(custom_id: str, key: str, status: int, body: bytes, config: BatchConfig) -> Line:
    error = None
    if config.error_shape == "dashscope":  # DashScope's sample files name the error beside the response
        inner = json.loads(body)["error"]
        error = _error_object(config.error_shape, inner.get("code") or inner["type"], inner["message"])
    return Line(custom_id, False, _output_line(custom_id, key, status, body, error))


def _error_object(shape: ErrorShape, code: str, message: str) -> dict[str, str]:
    if shape == "dashscope":
        return {"error_code": code, "error_message": message}
    return {"code": code, "message": message}


def _output_line(custom_id: str, key: str, status: int, body: bytes, error: dict[str, str] | None) -> bytes:
    head = json.dumps({"id": f"batch_req_emu_{_digest(custom_id)}", "custom_id": custom_id})[:-1]
    response = f'{{"status_code": {status}, "request_id": "req_emu_{key[:24]}", "body": '
    return (
        f'{head}, "response": {response}'.encode()
        + body
        + b'}, "error": '
        + json.dumps(error).encode()
        + b"}\n"
    )


def not_run_line(custom_id: str, code: str, shape: ErrorShape) -> bytes:
    error = _error_object(shape, code, _NOT_RUN[code])
    data = {
        "id": f"batch_req_emu_{_digest(custom_id)}",
        "custom_id": custom_id,
        "response": None,
        "error": error,
    }
    return json.dumps(data).encode() + b"\n"


def check_file(
    content: bytes, endpoint: str, models: tuple[str, ...] | None
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The file's requests, and the first rule it breaks (`{code, message, line}`), if any."""
    requests: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    lines = content.splitlines()
    if not any(line.strip() for line in lines):
        return [], {"code": "empty_file", "message": "The input file has no requests.", "line": None}
    if len(lines) > MAX_LINES:
        return [], {
            "code": "too_many_requests",
            "message": f"At most {MAX_LINES} requests per file.",
            "line": None,
        }
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], {
                "code": "invalid_json_line",
                "message": f"Line {number} is not valid JSON.",
                "line": number,
            }
        problem = _line_problem(line, endpoint, seen)
        if problem is not None:
            return [], {"code": problem[0], "message": f"Line {number}: {problem[1]}", "line": number}
        this = line["body"]["model"]
        if models is not None and this not in models:
            message = f"Line {number}: the model {this!r} does not support batch inference here."
            return [], {"code": "model_not_supported", "message": message, "line": number}
        if model is not None and this != model:
            message = f"Line {number}: every request of a file must use one model ({model!r}, not {this!r})."
            return [], {"code": "mismatched_model", "message": message, "line": number}
        model = this
        seen.add(line["custom_id"])
        requests.append(line)
    return requests, None


def _line_problem(line: Any, endpoint: str, seen: set[str]) -> tuple[str, str] | None:
    if not isinstance(line, dict):
        return "invalid_request", "a line must be a JSON object."
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "invalid_request", "custom_id must be a non-empty string."
    if custom_id in seen:
        return "duplicate_custom_id", f"the custom_id {custom_id!r} is used twice."
    if line.get("method") != "POST":
        return "invalid_request", "method must be POST."
    if line.get("url") != endpoint:
        return "invalid_url", f"url must be the batch's endpoint {endpoint!r}."
    body = line.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "invalid_request", "body must be an object naming a model."
    return None
