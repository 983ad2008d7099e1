"""Tests of the emulator's injected faults and the config's validation, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import httpx
import pytest

from batchrun.emulator import STATUS_DROPPED, STATUS_TRUNCATED, EmulatorConfig, EmulatorServer
from batchrun.emulator.config import FAULT_RATES
from batchrun.emulator.faults import FaultPicker


def _body(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "qwen3-8b", "messages": [{"role": "user", "content": prompt}], **extra}


def _client(server: EmulatorServer) -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must not intercept 127.0.0.1.
    return httpx.Client(base_url=server.base_url, trust_env=False, timeout=5.0)


def _read_raw(response: httpx.Response, into: bytearray) -> None:
    for chunk in response.iter_raw():
        into += chunk


def _server_error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


@pytest.mark.parametrize(
    ("field", "status", "body"),
    [
        ("rate_502", 502, _server_error("Bad gateway: the upstream server did not answer (emulated).")),
        (
            "rate_503",
            503,
            _server_error("The engine is currently overloaded, please try again later (emulated)."),
        ),
        ("rate_529", 529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    ],
)
def test_error_faults_give_their_status_and_body(field: str, status: int, body: dict[str, Any]) -> None:
    """At rate 1.0, 502 and 503 answer OpenAI server_error bodies and 529 Anthropic's overloaded_error."""
    config: dict[str, Any] = {field: 1.0}
    with EmulatorServer(EmulatorConfig(**config)) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == status
    assert response.json() == body
    assert server.emulator.requests_by_status == {status: 1}
    assert server.emulator.answered == {}


def test_drop_closes_the_connection_without_a_reply() -> None:
    """With rate_drop=1.0 the client sees the server disconnect, counted under status 0."""
    with EmulatorServer(EmulatorConfig(rate_drop=1.0)) as server, _client(server) as http:
        for _ in range(2):  # the second request shows the server is still up after dropping one
            with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                http.post("/chat/completions", json=_body("Hello."))
    assert server.emulator.requests_by_status == {STATUS_DROPPED: 2}
    assert server.emulator.answered == {}


def test_truncate_sends_200_and_half_the_body() -> None:
    """With rate_truncate=1.0 the reply is a 200 announcing the full length but carrying only half of it."""
    received = bytearray()
    with (
        EmulatorServer(EmulatorConfig(rate_truncate=1.0)) as server,
        _client(server) as http,
        http.stream("POST", "/chat/completions", json=_body("Hello.")) as response,
    ):
        assert response.status_code == 200
        length = int(response.headers["content-length"])
        with pytest.raises(httpx.RemoteProtocolError):
            _read_raw(response, received)
    assert len(received) == length // 2
    assert received.startswith(b'{"id": "chatcmpl-emu-')
    with pytest.raises(json.JSONDecodeError):
        json.loads(received)
    assert server.emulator.requests_by_status == {STATUS_TRUNCATED: 1}
    assert server.emulator.answered == {}


def test_slow_reply_comes_slow_s_late_on_top_of_latency() -> None:
    """With rate_slow=1.0 a normal 200 arrives after latency_s + slow_s."""
    config = EmulatorConfig(rate_slow=1.0, slow_s=0.3, latency_s=0.05)
    with EmulatorServer(config) as server, _client(server) as http:
        started = time.perf_counter()
        response = http.post("/chat/completions", json=_body("Hello."))
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"
    assert elapsed >= 0.35
    assert server.emulator.requests_by_status == {200: 1}
    assert sum(server.emulator.answered.values()) == 1


def _outcomes(config: EmulatorConfig, bodies: list[dict[str, Any]]) -> tuple[list[str], dict[int, int]]:
    """What each request got (a status, or "broken" for a dropped or cut connection) and the counters."""
    outcomes = []
    with EmulatorServer(config) as server, _client(server) as http:
        for body in bodies:
            try:
                outcomes.append(str(http.post("/chat/completions", json=body).status_code))
            except httpx.TransportError:
                outcomes.append("broken")
    return outcomes, dict(server.emulator.requests_by_status)


def test_seeded_fault_mix_is_reproducible() -> None:
    """A mix of every fault with a fixed seed gives the same outcome per request on two servers."""
    rates: dict[str, Any] = dict.fromkeys(FAULT_RATES, 0.1)
    config = EmulatorConfig(**rates, slow_s=0.001, seed=5)
    bodies = [_body(f"Row {i}.") for i in range(40)] * 2  # the second pass is every request's 2nd attempt
    first, counts = _outcomes(config, bodies)
    assert _outcomes(config, bodies) == (first, counts)
    # 80 requests at 10% each: every kind shows up (checked, not left to luck: the draw is seeded).
    assert set(counts) == {200, 429, 500, 502, 503, 529, STATUS_DROPPED, STATUS_TRUNCATED}
    assert first.count("broken") == counts[STATUS_DROPPED] + counts[STATUS_TRUNCATED]
    assert _outcomes(EmulatorConfig(**rates, slow_s=0.001, seed=6), bodies)[0] != first


def test_fault_draw_keeps_the_old_429_500_scheme() -> None:
    """The draw is Random(f"{seed}:{key}:{attempt}") against cumulative rates: 429s, 500s, then the rest."""
    picker = FaultPicker(EmulatorConfig(rate_429=0.2, rate_500=0.3, rate_drop=0.1, seed=9))
    for i in range(200):
        key = f"{i:032x}"
        draw = random.Random(f"9:{key}:1").random()
        expected = (
            "rate_429" if draw < 0.2 else "rate_500" if draw < 0.5 else "rate_drop" if draw < 0.6 else None
        )
        fault = picker.pick(key, 1)
        assert (fault.value if fault else None) == expected


def test_all_rates_may_add_up_to_one() -> None:
    """Eight rates of 0.125 are valid: their sum is 1, and every request gets a fault."""
    rates: dict[str, Any] = dict.fromkeys(FAULT_RATES, 0.125)
    config = EmulatorConfig(**rates)
    assert FaultPicker(config).active
    assert not FaultPicker(EmulatorConfig()).active


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"requests_per_minute": -60}, "requests_per_minute"),
        ({"requests_per_minute": float("inf")}, "requests_per_minute"),
        ({"tokens_per_minute": float("nan")}, "tokens_per_minute"),
        ({"tokens_per_minute": "1000"}, "tokens_per_minute"),
        ({"rate_limit_headers": "no"}, "rate_limit_headers"),
        ({"rate_502": 1.5}, "rate_502"),
        ({"rate_503": -0.1}, "rate_503"),
        ({"rate_529": float("nan")}, "rate_529"),
        ({"rate_drop": True}, "rate_drop"),
        ({"rate_truncate": 2}, "rate_truncate"),
        ({"rate_slow": -1}, "rate_slow"),
        ({"rate_503": 0.5, "rate_529": 0.6}, "rate_529"),
        ({"rate_429": 0.5, "rate_slow": 0.6}, "rate_slow"),
        ({"slow_s": -1.0}, "slow_s"),
        ({"slow_s": float("inf")}, "slow_s"),
        ({"outage_after_s": -1.0}, "outage_after_s"),
        ({"outage_after_s": float("nan")}, "outage_after_s"),
        ({"outage_s": -0.5, "outage_after_s": 0}, "outage_s"),
        ({"outage_s": 5.0}, "outage_s"),  # an outage with no start time
        ({"hold_after": -1}, "hold_after"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_invalid_new_config_raises_value_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """An out-of-range rate-limit, fault or outage setting raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        EmulatorConfig(**kwargs)
