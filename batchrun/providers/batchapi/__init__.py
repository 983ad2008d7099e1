"""The providers' Batch APIs, client side: half price for answers that may take hours.

Two implementations of one small protocol (`BatchAPI`), made by `make_batch_api`:
`OpenAIBatchAPI` (`/files` + `/batches`: OpenAI, DashScope, vLLM and other OpenAI-compatible servers) and
`AnthropicBatchAPI` (`/v1/messages/batches`). Both read every reply with the provider's own `parse` and
`error`, so a batch row is parsed, priced and classified exactly as a live one.

What the batch engine calls, in this order:

1. `limits_for(kind, base_url, max_requests, max_bytes)`: the file limits (the provider's less a margin,
   or the job's `[batch]` values). `split(requests, api, limits, folder, first_index)` writes the prepared
   `Request`s into part files, one model (and, for DashScope, one thinking mode) per part, and yields each
   `Part` as it is complete, and a `Refused` (with a classified error) for a request no batch can carry.
2. Before uploading a part, journal the intent: the part's index, its custom_ids, its `Tag` (job, run,
   part, request count) and the Unix time. Then `info = await api.submit(part, tag)`, and journal
   `info.id` at once. Submit parts one at a time (see `anthropic` for why).
3. Resume: for intents journaled without a batch id, `await api.find(tags, since, exclude=known_ids)`
   (`since`: the earliest intent's time) gives the batches created for them, oldest first: adopt the first
   (a second one, only possible if a create's answer was lost twice, can be cancelled). No batch found
   means none was created: submit the part again.
4. Poll each batch with `await api.retrieve(id)` every `poll_interval_s` (sooner at first) until
   `info.done`; `info.state` and `info.counts` are what the progress shows; `info.error` is set when the
   batch failed as a whole (a file refused at validation): it applies to every request of the batch.
5. `paths = await api.download(info, folder)`, then `for line in api.read(paths, part.custom_ids)`: one
   `LineResult` per custom_id sent: `reply` (a `Reply`, to price at the batch discount), `error` (a
   `ProviderError` classified as live: retry, row, or stop the run), or `unanswered` (`expired`,
   `cancelled`, `missing`: never ran, never billed; send it again, in a batch or live).
6. `await api.cancel(id)` for `batchrun cancel` and past `live_after`; then poll until done and read what
   finished before the cancel took effect.

Idempotent, safe to repeat after a kill: `retrieve`, `page`, `find`, `cancel` (a batch already over is
returned as it is), `download` (files are replaced whole), `read` (pure), `split` (same input, same parts).
Not idempotent: `submit`; a create whose answer is lost (timeout, dropped connection, 5xx) is looked for by
its tag before it is tried again, and the engine's intent journal covers a kill in between.

Every control call goes over the httpx client the engine passes in (one per run; `httpx.MockTransport` in
tests) and is retried on 429, 5xx, timeouts and dropped connections within `Retry`'s bounds. Every string a
server sends back is bounded and scrubbed of the API key; ids are checked before they go into a URL; result
lines naming requests not sent are ignored.
"""

from __future__ import annotations

import httpx

from batchrun.providers.base import Provider
from batchrun.providers.batchapi.anthropic import AnthropicBatchAPI, wire_id
from batchrun.providers.batchapi.base import BatchAPI
from batchrun.providers.batchapi.control import DEFAULT_RETRY, Retry
from batchrun.providers.batchapi.openai import OpenAIBatchAPI
from batchrun.providers.batchapi.records import (
    BatchInfo,
    Counts,
    FileLimits,
    LineResult,
    Part,
    Refused,
    State,
    Tag,
)
from batchrun.providers.batchapi.split import HARD_LIMITS, limits_for, split

__all__ = [
    "HARD_LIMITS",
    "AnthropicBatchAPI",
    "BatchAPI",
    "BatchInfo",
    "Counts",
    "FileLimits",
    "LineResult",
    "OpenAIBatchAPI",
    "Part",
    "Refused",
    "Retry",
    "State",
    "Tag",
    "limits_for",
    "make_batch_api",
    "split",
    "wire_id",
]


def make_batch_api(
    client: httpx.AsyncClient,
    provider: Provider,
    base_url: str,
    api_key: str | None,
    *,
    completion_window: str = "24h",
    retry: Retry = DEFAULT_RETRY,
) -> BatchAPI:
    """The Batch API client for the provider's kind, on the endpoint live requests go to."""
    if provider.kind == "anthropic":
        return AnthropicBatchAPI(client, provider, base_url, api_key, retry=retry)
    return OpenAIBatchAPI(
        client, provider, base_url, api_key, completion_window=completion_window, retry=retry
    )
