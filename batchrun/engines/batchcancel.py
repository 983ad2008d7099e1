"""`batchrun cancel JOB`: cancel the job's batches still running at the provider."""

from __future__ import annotations

import anyio
import httpx

from batchrun.engines.batch import CONTROL_TIMEOUT
from batchrun.engines.batchlog import BatchLog
from batchrun.errors import ProviderError, StopRun
from batchrun.job.schema import Job
from batchrun.net.endpoint import api_key, open_endpoint
from batchrun.providers import make_provider
from batchrun.providers.batchapi import BatchInfo, make_batch_api
from batchrun.redact import hiding, secrets_of
from batchrun.store.runstore import run_folder


def cancel_batches(job: Job) -> list[BatchInfo]:
    """Ask the provider to cancel every batch of the job's output whose rows still wait; what each is now.

    Only batches the batch journal holds rows for are touched (a collected batch's rows are gone from it).
    A run still waiting on them sees them end cancelled and sends their rows again: stop it first.
    """
    log = BatchLog(run_folder(job.output_path))
    live = [
        record.batch_id
        for record in log.load().values()
        if record.batch_id is not None and log.rows_path(record.index).is_file()
    ]
    if not live:
        return []
    key = api_key(job)
    provider = job.provider
    with hiding(secrets_of(key, provider.base_url, provider.headers)), open_endpoint(job) as base_url:
        adapter = make_provider(provider.kind, base_url, key, provider.headers, provider.auth)

        async def cancel_all() -> list[BatchInfo]:
            async with httpx.AsyncClient(timeout=CONTROL_TIMEOUT) as client:
                api = make_batch_api(client, adapter, base_url, key)
                return [await api.cancel(batch_id) for batch_id in live]

        try:
            return anyio.run(cancel_all)
        except ProviderError as exc:
            raise StopRun(f"Cancelling the batches of {job.output_path} failed: {exc.message}") from None
