"""Where a job's requests go: its base URL (starting the built-in emulator if asked) and its API key."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from batchrun.errors import ProviderError, UsageError
from batchrun.job import Job

EMULATOR_LATENCY_S = 0.02  # the demo's emulator answers like a fast model, not instantly


def api_key(job: Job) -> str | None:
    """The key from the environment variable the job names; UsageError (exit 2) if a required one is unset."""
    env = job.provider.api_key_env
    if env is None:
        return None
    key = read_key(env)
    if key is None and job.provider.api_key_required:
        raise UsageError(
            f"{job.source}: the environment variable {env} is not set or is empty; export {env}=<your key> "
            f"(it names [provider] api_key_env; the key itself never goes into a job file)"
        )
    if key is not None and any(ord(c) < 32 or ord(c) == 127 for c in key):
        # It would end the Authorization header early; the key itself is not shown.
        raise UsageError(
            f"{job.source}: the key in {env} holds a control character (a line break?); set it again"
        )
    return key


def read_key(env: str) -> str | None:
    """The key held by the environment variable `env`, None when unset or blank.

    Surrounding whitespace is never part of a key: a line end from a file or a CRLF `.env` is dropped.
    """
    return os.environ.get(env, "").strip() or None


@contextlib.contextmanager
def open_endpoint(job: Job) -> Iterator[str]:
    """The base URL; for the `emulator` preset, the emulator is started on a free loopback port meanwhile."""
    if job.provider.base_url is not None:
        yield job.provider.base_url
        return
    from batchrun.emulator import EmulatorConfig, EmulatorServer
    from batchrun.providers import KINDS

    with EmulatorServer(EmulatorConfig(latency_s=EMULATOR_LATENCY_S)) as server:
        # The emulator speaks every kind, each where that kind's SDK expects it (`/v1` or the root).
        yield server.root_url + KINDS[job.provider.kind].emulator_path


def cache_scope(job: Job) -> str:
    """What a cached answer is tied to: the endpoint (the emulator's port changes, its answers do not)."""
    return job.provider.base_url or f"preset:{job.provider.preset}"


def fatal_message(job: Job, exc: ProviderError) -> str:
    """Why the run stopped on a fatal error, and what to fix in the job, account or environment."""
    status = f"HTTP {exc.status}" if exc.status else "error"
    code = f" ({exc.code})" if exc.code else ""
    head = f"Stopped: {status}{code} from {job.provider.base_url or 'the emulator'}: {exc.message}"
    env = job.provider.api_key_env
    fixes: dict[str, str] = {
        "auth": f"Check the key in {env} and that it belongs to this endpoint's region and account."
        if env
        else "The endpoint wants a key: set [provider] api_key_env to the variable that holds it.",
        "billing": "The account has no balance or quota left: top it up, then rerun.",
        "model_not_found": f"Check [provider] model ({job.provider.model!r}) against the provider's models.",
        "outage": "The provider is down: rerun later to resume.",
    }
    return f"{head}\n{fixes.get(exc.error_type, 'Fix the cause, then rerun.')}"
