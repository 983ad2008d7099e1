"""A local OpenAI- and Anthropic-compatible server: the demo provider, and the target of tests and benches.

Every answer is deterministic. The reply text is a function of the model and the messages only, so a rerun
of the same prompt set gives the same output; injected faults (429, 500, 502, 503, 529, dropped connections,
truncated bodies, slow replies) are a function of the seed, the raw request body and how many times that
body was admitted, so a retrying client sees the same fault pattern on every run. Optional RPM and TPM limits
are enforced the ways real providers do (a bucket, a sliding or fixed one-second window, a fixed minute),
with or without OpenAI's rate-limit headers; an
optional outage window answers every request 503. Requests are cheap to answer (no logging, stdlib `json`,
each feature costs nothing while it is off) so benchmarks measure the client.

Endpoints: `POST /v1/chat/completions` (also `/chat/completions`), `POST /v1/messages` (Anthropic),
`GET /v1/models`, `GET /health`. Both chat endpoints answer as JSON, or as server-sent events when the
request sets `stream: true`; on request they add thinking (`enable_thinking` / `thinking`), call a tool the
request offers (`tools`), answer JSON (`response_format`) or several choices (`n`): see `answers`.
Both Batch APIs too, on a time scale of seconds (`BatchConfig`): `/v1/files` + `/v1/batches` (`batches`)
and `/v1/messages/batches` (`msgbatches`), answered by the same code as live requests.

Modules: `config` (EmulatorConfig), `replies` (parsing, reply text, usage), `answers` (thinking, tool
calls, JSON, n), `dialects` (the OpenAI and Anthropic wire formats, JSON and SSE), `ratelimit` (RPM/TPM
windows and headers), `faults` (the fault draw, broken connections and cut streams), `app` (the handlers
and counters), `server` (EmulatorServer and serve), `batchconfig`, `batchjobs` (a batch's phases),
`batchlines` (an OpenAI batch file's lines), `batches` and `msgbatches` (the Batch APIs).
"""

from __future__ import annotations

from batchrun.emulator.app import STATUS_DROPPED, STATUS_TRUNCATED, Emulator
from batchrun.emulator.batchconfig import BatchConfig
from batchrun.emulator.config import EmulatorConfig
from batchrun.emulator.ratelimit import format_duration
from batchrun.emulator.replies import DIRECTIVE_400, MODELS, count_tokens
from batchrun.emulator.server import EmulatorServer, serve

__all__ = [
    "DIRECTIVE_400",
    "MODELS",
    "STATUS_DROPPED",
    "STATUS_TRUNCATED",
    "BatchConfig",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "count_tokens",
    "format_duration",
    "serve",
]
