"""Tests of the emulator's RPM/TPM limits, their headers and the outage window, over HTTP on 127.0.0.1."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from batchrun.emulator import EmulatorConfig, EmulatorServer, format_duration
from batchrun.emulator.ratelimit import RateLimiter
from batchrun.engines.run import run_job
from batchrun.job.loader import load_job

# Go's duration format as OpenAI sends it: `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
DURATION = re.compile(r"\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s")
RATE_HEADERS = ("limit", "remaining", "reset")


def _body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "qwen3-8b", "messages": [{"role": "user", "content": prompt}], **extra}


def _client(server: EmulatorServer) -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must not intercept 127.0.0.1.
    return httpx.Client(base_url=server.base_url, trust_env=False, timeout=5.0)


def _rate_headers(response: httpx.Response) -> set[str]:
    return {name for name in response.headers if name.startswith(("x-ratelimit-", "retry-after"))}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-1.0, "0s"),
        (0.02, "20ms"),
        (0.0001, "1ms"),  # rounded up: a wait that is not over never reads as 0s
        (0.9994, "1s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (59.25, "59.25s"),
        (360.0, "6m0s"),
        (90.5, "1m30.5s"),
        (3600.0, "1h0m0s"),
    ],
)
def test_format_duration_writes_go_durations(seconds: float, text: str) -> None:
    """Durations read like OpenAI's reset headers, rounded up to the millisecond."""
    assert format_duration(seconds) == text
    assert DURATION.fullmatch(text)


def test_request_bucket_holds_one_second_and_refills_continuously() -> None:
    """At 600 RPM the bucket admits 10 at once, then one more per 0.1 s, with exact headers."""
    limiter = RateLimiter(600, None, headers=True, now=0.0)
    verdicts = [limiter.admit(0, 0.0) for _ in range(11)]
    assert [v.refused for v in verdicts] == [None] * 10 + ["requests"]
    assert verdicts[0].headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "100ms",
    }
    assert verdicts[10].headers == {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "retry-after-ms": "100.0",
        "retry-after": "1",
    }
    half = limiter.admit(0, 0.05)
    assert half.refused == "requests"
    assert half.headers is not None
    assert half.headers["retry-after-ms"] == "50.0"
    assert half.headers["x-ratelimit-reset-requests"] == "950ms"
    assert limiter.admit(0, 0.1).refused is None
    # A long pause refills the bucket to one second's worth, never more.
    assert [limiter.admit(0, 60.0).refused for _ in range(11)].count(None) == 10


def test_token_bucket_admits_a_big_request_when_full_and_goes_into_debt() -> None:
    """At 600 TPM (10 a second) a 25-token request passes a full bucket and the next waits for the debt."""
    limiter = RateLimiter(None, 600, headers=True, now=0.0)
    assert limiter.admit(4, 0.0).refused is None
    assert limiter.admit(4, 0.0).refused is None
    refused = limiter.admit(4, 0.0)
    assert refused.refused == "tokens"
    assert refused.headers is not None
    assert refused.headers["retry-after-ms"] == "200.0"  # 2 tokens left, 4 needed, 10 a second
    assert "x-ratelimit-limit-requests" not in refused.headers

    limiter = RateLimiter(None, 600, headers=True, now=0.0)
    big = limiter.admit(25, 0.0)
    assert big.refused is None
    assert big.headers == {
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "2.5s",
    }
    after = limiter.admit(1, 0.0)
    assert after.refused == "tokens"
    assert after.headers is not None
    assert after.headers["retry-after-ms"] == "1600.0"  # 15 tokens of debt, then 1: 16 at 10 a second
    assert after.headers["retry-after"] == "2"


def test_both_limits_must_admit_and_a_refusal_takes_nothing() -> None:
    """A request refused by the token limit does not spend a request, and the wait is the longer one."""
    limiter = RateLimiter(60, 60, headers=True, now=0.0)  # 1 request and 1 token a second
    assert limiter.admit(1, 0.0).refused is None
    refused = limiter.admit(1, 0.5)
    assert refused.refused == "requests"  # both refuse: the request limit is named, like OpenAI does
    assert refused.headers is not None
    assert refused.headers["retry-after-ms"] == "500.0"
    assert limiter.admit(1, 1.0).refused is None


def test_rpm_limit_gives_429s_with_headers_then_admits_after_the_wait() -> None:
    """At 240 RPM four quick requests pass, the next get a requests 429 with headers, and a retry passes."""
    config = EmulatorConfig(requests_per_minute=240, latency_s=0.0)
    with EmulatorServer(config) as server, _client(server) as http:
        responses = [http.post("/chat/completions", json=_body(f"Row {i}.")) for i in range(6)]
        assert [r.status_code for r in responses] == [200] * 4 + [429] * 2
        first, refused = responses[0], responses[-1]
        assert first.headers["x-ratelimit-limit-requests"] == "240"
        assert first.headers["x-ratelimit-remaining-requests"] == "3"
        assert DURATION.fullmatch(first.headers["x-ratelimit-reset-requests"])
        assert "retry-after" not in first.headers
        assert "x-ratelimit-limit-tokens" not in first.headers
        assert refused.json() == {
            "error": {
                "message": "Rate limit reached for requests (emulated RPM limit)",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert DURATION.fullmatch(refused.headers["x-ratelimit-reset-requests"])
        wait_ms = float(refused.headers["retry-after-ms"])
        assert 0 < wait_ms <= 250
        assert refused.headers["retry-after"] == "1"
        time.sleep(wait_ms / 1000)
        assert http.post("/chat/completions", json=_body("Retry.")).status_code == 200
    assert server.emulator.requests_by_status == {200: 5, 429: 2}
    assert server.emulator.throttled == {"requests": 2}
    assert sum(server.emulator.answered.values()) == 5


def test_tpm_limit_counts_prompt_plus_max_tokens_or_the_reply() -> None:
    """A request costs its prompt plus max_tokens, or plus its reply's tokens when it sets none."""
    # "Hello." is round(6 / 4) = 2 tokens, + 4 for the message, + 3 for the request: a 9-token prompt.
    for extra, completion in (({"max_tokens": 50}, 50), ({}, None)):
        with EmulatorServer(EmulatorConfig(tokens_per_minute=6000)) as server, _client(server) as http:
            response = http.post("/chat/completions", json=_body("Hello.", **extra))
        usage = response.json()["usage"]
        assert usage["prompt_tokens"] == 9
        cost = 9 + (completion if completion is not None else usage["completion_tokens"])
        assert response.headers["x-ratelimit-limit-tokens"] == "6000"
        assert response.headers["x-ratelimit-remaining-tokens"] == str(100 - cost)


def test_tpm_limit_gives_tokens_429_and_a_big_request_leaves_debt() -> None:
    """At 1200 TPM (20 a second) a 109-token request passes a full bucket and the next gets a tokens 429."""
    with EmulatorServer(EmulatorConfig(tokens_per_minute=1200)) as server, _client(server) as http:
        big = http.post("/chat/completions", json=_body("Hello.", max_tokens=100))
        refused = http.post("/chat/completions", json=_body("Hello.", max_tokens=11))
    assert big.status_code == 200
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert refused.json()["error"]["message"] == "Rate limit reached for tokens (emulated TPM limit)"
    # 89 tokens of debt plus the 20 this one costs, at 20 a second: about 5.45 s (a little less, as the
    # bucket refilled while the first request was answered).
    assert 5000 < float(refused.headers["retry-after-ms"]) <= 5450
    assert refused.headers["retry-after"] == "6"
    assert {name for name in _rate_headers(refused) if name.endswith("-requests")} == set()
    assert server.emulator.throttled == {"tokens": 1}


def test_both_limits_send_both_header_sets() -> None:
    """With RPM and TPM set, a 200 carries the three request headers and the three token headers."""
    config = EmulatorConfig(requests_per_minute=600, tokens_per_minute=60000)
    with EmulatorServer(config) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == 200
    expected = {f"x-ratelimit-{part}-{what}" for part in RATE_HEADERS for what in ("requests", "tokens")}
    assert _rate_headers(response) == expected


def test_rate_limit_headers_false_sends_bare_429s() -> None:
    """With rate_limit_headers=False neither 200s nor 429s (limited or injected) carry rate headers."""
    config = EmulatorConfig(requests_per_minute=60, tokens_per_minute=6000, rate_limit_headers=False)
    with EmulatorServer(config) as server, _client(server) as http:
        ok = http.post("/chat/completions", json=_body("Hello."))
        refused = http.post("/chat/completions", json=_body("Hello."))
    assert (ok.status_code, refused.status_code) == (200, 429)
    assert _rate_headers(ok) == set()
    assert _rate_headers(refused) == set()
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"

    injected = EmulatorConfig(rate_429=1.0, rate_limit_headers=False)
    with EmulatorServer(injected) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == 429
    assert _rate_headers(response) == set()


def test_limit_429_is_immediate_but_admitted_requests_wait_the_latency() -> None:
    """A request over the limit is refused at once; the admitted ones still take latency_s."""
    with (
        EmulatorServer(EmulatorConfig(requests_per_minute=60, latency_s=0.3)) as server,
        _client(server) as http,
    ):
        started = time.perf_counter()
        assert http.post("/chat/completions", json=_body("First.")).status_code == 200
        middle = time.perf_counter()
        assert http.post("/chat/completions", json=_body("Second.")).status_code == 429
        ended = time.perf_counter()
    assert middle - started >= 0.3
    assert ended - middle < 0.25


def test_injected_429_also_carries_the_limit_headers() -> None:
    """An injected 429 under an RPM limit carries the limiter's headers and the configured retry-after."""
    config = EmulatorConfig(requests_per_minute=600, rate_429=1.0, retry_after_s=0.07)
    with EmulatorServer(config) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == 429
    assert response.json()["error"]["message"] == "Rate limit reached for requests (emulated)."
    assert response.headers["retry-after-ms"] == "70.0"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"


def test_outage_answers_503_then_recovers() -> None:
    """With outage_after_s=0 and outage_s=0.5 requests get the outage 503 at first and 200 after 0.5 s."""
    before = time.monotonic()
    with EmulatorServer(EmulatorConfig(outage_after_s=0, outage_s=0.5)) as server, _client(server) as http:
        started_at = server.emulator.started_at
        assert before <= started_at <= time.monotonic()
        response = http.post("/chat/completions", json=_body("Hello."))
        assert response.status_code == 503
        assert response.json() == {
            "error": {
                "message": "The service is temporarily unavailable (emulated outage).",
                "type": "server_error",
                "param": None,
                "code": "service_unavailable",
            }
        }
        time.sleep(max(0.0, started_at + 0.5 - time.monotonic()) + 0.01)
        assert http.post("/chat/completions", json=_body("Hello.")).status_code == 200
    assert server.emulator.requests_by_status == {503: 1, 200: 1}


def test_outage_starts_after_outage_after_s() -> None:
    """Before outage_after_s has passed requests are answered; inside the window they get 503."""
    config = EmulatorConfig(outage_after_s=0.3, outage_s=10)
    with EmulatorServer(config) as server, _client(server) as http:
        assert http.post("/chat/completions", json=_body("Hello.")).status_code == 200
        time.sleep(max(0.0, server.emulator.started_at + 0.3 - time.monotonic()) + 0.01)
        assert http.post("/chat/completions", json=_body("Hello.")).status_code == 503


def test_sliding_window_refuses_the_one_past_limit_within_any_second() -> None:
    """At 600 RPM a sliding window admits 10 in any 1.0 s: the 11th waits until the oldest has left."""
    limiter = RateLimiter(600, None, headers=True, now=0.0, window="sliding")
    admitted = [limiter.admit(0, i * 0.05).refused for i in range(10)]  # 10 in 0.45 s
    assert admitted == [None] * 10
    refused = limiter.admit(0, 0.9)
    assert refused.refused == "requests"
    assert refused.headers is not None
    assert refused.headers["retry-after-ms"] == "100.0"  # the first left at 1.0 s
    assert limiter.admit(0, 1.0).refused is None
    assert limiter.admit(0, 1.01).refused == "requests"  # the second (0.05) is still inside
    assert limiter.admit(0, 1.05).refused is None


def test_fixed_second_window_empties_as_the_clock_second_turns() -> None:
    """A fixed one-second window takes 10 in second 3 however bunched, then nothing until second 4."""
    limiter = RateLimiter(600, None, headers=False, now=0.0, window="second")
    assert [limiter.admit(0, 3.9 + i * 0.001).refused for i in range(11)] == [None] * 10 + ["requests"]
    assert [limiter.admit(0, 4.0).refused for _ in range(10)] == [None] * 10


def test_fixed_minute_window_admits_a_minutes_worth_at_any_pace() -> None:
    """OpenAI-style: 120 RPM admits 120 at once, refuses the rest of that minute, resets with the next."""
    limiter = RateLimiter(120, None, headers=True, now=0.0, window="minute")
    assert all(limiter.admit(0, 61.0).refused is None for _ in range(120))
    refused = limiter.admit(0, 90.0)
    assert refused.refused == "requests"
    assert refused.headers is not None
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "30s"
    assert limiter.admit(0, 120.0).refused is None


def test_token_windows_admit_one_oversized_request_only_when_empty() -> None:
    """A request bigger than the tokens window goes into an empty window, never beside another."""
    for window in ("sliding", "second", "minute"):
        limiter = RateLimiter(None, 600, headers=False, now=0.0, window=window)  # 10 tokens a second
        assert limiter.admit(4, 0.0).refused is None
        assert limiter.admit(700, 0.1).refused == "tokens", window
        assert limiter.admit(700, 61.0).refused is None, window


@pytest.mark.parametrize("window", ["sliding", "second", "minute"])
def test_a_run_meets_every_window_with_its_rows_all_answered(window: str, tmp_path: Path) -> None:
    """batchrun, told the rate, answers every row against each strict window with few 429s."""
    rows = 120
    prompts = tmp_path / "in.jsonl"
    prompts.write_text("".join(f'{{"id": {i}, "text": "row {i}"}}\n' for i in range(rows)))
    config = EmulatorConfig(requests_per_minute=3600, limit_window=window, rate_limit_headers=False)
    with EmulatorServer(config) as server:
        job = tmp_path / "job.toml"
        job.write_text(
            f'[input]\npath = "in.jsonl"\nid_column = "id"\n[prompt]\ntemplate = "{{text}}"\n'
            f'[provider]\nkind = "openai"\nbase_url = "{server.base_url}"\nmodel = "qwen3-max"\n'
            f"[limits]\nrequests_per_minute = 3600\nbackoff_base_s = 0.01\n"
        )
        summary = run_job(load_job(job))
        refused = server.emulator.requests_by_status[429]
    assert summary.ok == rows
    assert refused <= rows // 10
