"""Where a job's requests go: its base URL (starting the built-in emulator if asked), its API key, whether
it ever answered, and what to tell the user when the run must stop."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from batchrun.errors import ErrorClass, ProviderError, UsageError
from batchrun.job.schema import Job
from batchrun.redact import safe_url

EMULATOR_LATENCY_S = 0.02  # the demo's emulator answers like a fast model, not instantly
NEVER_ANSWERED_S = 5.0  # how long an endpoint that never answered is retried before the run stops
V1_HINT = (
    'OpenAI-compatible servers serve the API under /v1: base_url = "https://host/v1" '
    '(kind = "anthropic" takes the URL without /v1)'
)


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


class Contact:
    """Whether the endpoint has ever answered: one that never did stops the run within seconds.

    A wrong base URL shows as refused connections, a host name that does not resolve, an HTML page or a
    404. Retried, and probed by the outage breaker for `max_outage_s`, it would only hide its cause. So
    until the endpoint has answered once with HTTP (any status), connections that fail (refused, reset,
    no address, none made within `connect_timeout_s`) stop the run once they have gone on for `grace_s`
    (a server still starting gets that long), or as soon as a row runs out of tries; and until it has sent
    one usable answer, an HTML page stops the run at once. A timeout waiting for a reply does not count:
    a slow model is not a wrong URL. (A 404 on the path, a redirect and a TLS failure stop the run
    whenever they come: see `batchrun.net.transport.Sender`.)
    """

    def __init__(self, url: str, grace_s: float | None = None) -> None:
        self.url = safe_url(url)
        self.grace_s = NEVER_ANSWERED_S if grace_s is None else grace_s
        self.heard = False  # some HTTP reply came back
        self.served = False  # a usable answer came back
        self._first_failure: float | None = None

    def answered(self) -> None:
        """A usable answer arrived."""
        self.heard = self.served = True

    def check(self, exc: ProviderError, *, last_try: bool) -> ProviderError | None:
        """The fatal error that replaces `exc` when it shows the endpoint never answered; None otherwise."""
        if exc.status is not None:
            self.heard = True
        if exc.code == "html" and not self.served:
            message = f"{self.url} answers with an HTML page, not the API ({exc.message})"
            return ProviderError(
                message, error_type="not_api", error_class=ErrorClass.FATAL, status=exc.status
            )
        if self.heard or exc.error_type != "connection":
            return None  # a timeout may be a slow model: the breaker judges those
        now = time.monotonic()
        if self._first_failure is None:
            self._first_failure = now
        if last_try or now - self._first_failure >= self.grace_s:
            waited = now - self._first_failure
            message = f"no answer from {self.url} ({exc.message}; tried for {waited:.0f} s)"
            return ProviderError(message, error_type="unreachable", error_class=ErrorClass.FATAL)
        return None


def fatal_message(job: Job, exc: ProviderError) -> str:
    """Why the run stopped on a fatal error, and what to fix in the job, account or environment."""
    status = f"HTTP {exc.status}" if exc.status else "error"
    code = f" ({exc.code})" if exc.code else ""
    where = safe_url(job.provider.base_url) if job.provider.base_url else "the emulator"
    head = f"Stopped: {status}{code} from {where}: {exc.message}"
    env = job.provider.api_key_env
    fixes: dict[str, str] = {
        "auth": f"Check the key in {env} and that it belongs to this endpoint's region and account."
        if env
        else "The endpoint wants a key: set [provider] api_key_env to the variable that holds it.",
        "billing": "The account has no balance or quota left: top it up, then rerun.",
        "model_not_found": f"Check [provider] model ({job.provider.model!r}) against the provider's models.",
        "outage": "The provider is down: rerun later to resume.",
        "unreachable": "Check [provider] base_url (scheme, host, port) and that the server runs, then rerun.",
        "not_found": f"Check [provider] base_url: {V1_HINT}. If it is right, check [provider] model.",
        "not_api": f"Check [provider] base_url: {V1_HINT}.",
        "tls": "The server's certificate does not verify, or it does not speak TLS: check http:// or "
        "https:// in [provider] base_url; for a private CA, point SSL_CERT_FILE at its certificate.",
        "redirect": "Set [provider] base_url to where the redirect points (http:// or https://, the path): "
        "batchrun does not follow redirects, which would turn a POST into a GET or send it twice.",
    }
    return f"{head}\n{fixes.get(exc.error_type, 'Fix the cause, then rerun.')}"
