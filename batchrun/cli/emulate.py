"""`batchrun emulate`: the built-in emulator as a server of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from batchrun.cli.common import main


def _share(name: str, what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A 0-1 option for one injected fault."""
    flag = "--" + name.replace("_", "-")
    return click.option(flag, name, default=0.0, show_default=True, help=f"Share of requests {what} (0-1).")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on (0: any free port).")
@click.option("--latency", "latency_s", default=0.0, show_default=True, help="Seconds before each reply.")
@click.option("--rpm", "requests_per_minute", type=float, help="Enforce this many requests per minute.")
@click.option("--tpm", "tokens_per_minute", type=float, help="Enforce this many tokens per minute.")
@click.option(
    "--limit-window",
    type=click.Choice(["bucket", "sliding", "second", "minute"]),
    default="bucket",
    show_default=True,
    help="How --rpm/--tpm are enforced: a bucket of one second's worth, a sliding or fixed (clock) "
    "one-second window of limit/60, or a fixed clock minute of the whole limit.",
)
@click.option(
    "--rate-limit-headers/--no-rate-limit-headers",
    default=True,
    show_default=True,
    help="Send x-ratelimit-* and retry-after headers (off: bare 429s, as DashScope).",
)
@_share("rate_429", "answered 429")
@_share("rate_500", "answered 500")
@_share("rate_502", "answered 502")
@_share("rate_503", "answered 503")
@_share("rate_529", "answered 529 (overloaded)")
@_share("rate_drop", "whose connection is dropped")
@_share("rate_truncate", "whose body is cut short")
@_share("rate_slow", "answered late (see --slow)")
@click.option("--slow", "slow_s", default=5.0, show_default=True, help="Extra seconds for a slow reply.")
@click.option(
    "--outage-after", "outage_after_s", type=float, help="Start a total outage after this many seconds."
)
@click.option("--outage", "outage_s", default=0.0, show_default=True, help="How long the outage lasts (s).")
@click.option(
    "--retry-after", "retry_after_s", default=0.05, show_default=True, help="Seconds a fault 429 asks for."
)
@click.option("--api-key-env", help="Require the key held by this environment variable (else any key works).")
@click.option("--seed", default=0, show_default=True, help="Seed for the fault pattern.")
@click.option("--batch-validating", "batch_validating_s", default=0.05, help="Batch API: seconds validating.")
@click.option("--batch-working", "batch_in_progress_s", default=0.2, help="Batch API: seconds in_progress.")
@click.option("--batch-finalizing", "batch_finalizing_s", default=0.05, help="Batch API: seconds finalizing.")
@click.option(
    "--batch-expire-after", "batch_expire_after_s", type=float, help="Batch API: seconds to expiry."
)
@click.option(
    "--batch-line-errors", "batch_line_error_rate", default=0.0, help="Batch API: share of 500 lines."
)
@click.option("--batch-error-shape", type=click.Choice(["openai", "dashscope"]), default="openai")
@click.option("--batch-model", "batch_models", multiple=True, help="Batch API: a model it takes (else all).")
def emulate(host: str, port: int, api_key_env: str | None, **behaviour: Any) -> None:
    """Serve a local OpenAI- and Anthropic-compatible API: deterministic replies, limits, faults."""
    from batchrun.emulator import EmulatorConfig, serve
    from batchrun.emulator.batchconfig import BatchConfig
    from batchrun.net.endpoint import read_key

    api_key = None
    if api_key_env:
        api_key = read_key(api_key_env)  # read as a job reads it, so both sides agree on the key
        if api_key is None:
            raise click.BadParameter(
                f"the environment variable {api_key_env} is not set or is empty", param_hint="--api-key-env"
            )
    batch = {name[6:]: behaviour.pop(name) for name in list(behaviour) if name.startswith("batch_")}
    try:
        batch["models"] = batch["models"] or None  # no --batch-model: every model may batch
        config = EmulatorConfig(api_key=api_key, batch=BatchConfig(**batch), **behaviour)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    serve(config, host=host, port=port)
