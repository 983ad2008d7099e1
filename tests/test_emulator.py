"""Tests of the local OpenAI-compatible emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from batchrun.emulator import DIRECTIVE_400, MODELS, EmulatorConfig, EmulatorServer


def _body(prompt: str, *, model: str = "qwen3-8b", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    text: str = response.json()["choices"][0]["message"]["content"]
    return text


def _client(server: EmulatorServer, **headers: str) -> httpx.Client:
    # trust_env=False: a proxy configured in the environment must not intercept 127.0.0.1.
    return httpx.Client(base_url=server.base_url, headers=headers, trust_env=False, timeout=5.0)


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """One default emulator shared by the tests that do not look at its counters."""
    with EmulatorServer() as running:
        yield running


@pytest.fixture
def client(server: EmulatorServer) -> Iterator[httpx.Client]:
    """A client for the shared default emulator."""
    with _client(server) as http:
        yield http


def test_ok_reply_has_openai_shape_and_consistent_usage(client: httpx.Client) -> None:
    """A 200 reply is a chat.completion with the requested model, one choice and usage that adds up."""
    response = client.post("/chat/completions", json=_body("Name three rivers.", temperature=0.3))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    reply = response.json()
    assert reply["id"].startswith("chatcmpl-emu-")
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["created"], int)
    assert reply["model"] == "qwen3-8b"
    assert reply["system_fingerprint"] == "emulator"
    [choice] = reply["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    text = choice["message"]["content"]
    assert text[0].isupper()
    assert text.endswith(".")
    assert 3 <= len(text.split()) <= 40
    usage = reply["usage"]
    # "Name three rivers." is 18 characters: round(18 / 4) = 4 tokens, + 4 per message, + 3 per request.
    assert usage["prompt_tokens"] == 4 + 4 + 3
    assert usage["completion_tokens"] == max(1, round(len(text) / 4))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


def test_same_request_gives_same_text(client: httpx.Client) -> None:
    """The same model and messages get the same text, whatever the sampling parameters."""
    bodies = [_body("Same prompt."), _body("Same prompt."), _body("Same prompt.", temperature=1.5, seed=3)]
    assert len({_text(client.post("/chat/completions", json=body)) for body in bodies}) == 1


def test_different_prompts_give_different_text(client: httpx.Client) -> None:
    """Different prompts (or models) get different texts."""
    bodies = [_body(f"Prompt number {i}.") for i in range(10)]
    bodies.append(_body("Prompt number 0.", model="qwen3-32b"))
    assert len({_text(client.post("/chat/completions", json=body)) for body in bodies}) == len(bodies)


@pytest.mark.parametrize("limit_name", ["max_tokens", "max_completion_tokens"])
def test_token_limit_cuts_text_with_finish_reason_length(client: httpx.Client, limit_name: str) -> None:
    """A token limit below the text's length cuts it to that many tokens, with finish_reason "length"."""
    body = _body("Cut me short.")
    full = client.post("/chat/completions", json=body).json()
    full_text = full["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] >= 2  # every reply has at least three words

    reply = client.post("/chat/completions", json={**body, limit_name: 1}).json()
    [choice] = reply["choices"]
    assert choice["finish_reason"] == "length"
    assert full_text.startswith(choice["message"]["content"])
    assert reply["usage"]["completion_tokens"] == 1

    roomy = client.post("/chat/completions", json={**body, limit_name: 1000}).json()
    assert roomy["choices"][0]["finish_reason"] == "stop"
    assert roomy["choices"][0]["message"]["content"] == full_text


def test_api_key_is_enforced_with_openai_401() -> None:
    """With an api_key, a missing or wrong bearer token gets a 401 invalid_api_key; the right one a 200."""
    expected = {
        "error": {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    with EmulatorServer(EmulatorConfig(api_key="sk-test")) as server:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-test"}):
            with _client(server, **headers) as http:
                response = http.post("/chat/completions", json=_body("Hello."))
            assert response.status_code == 401
            assert response.json() == expected
        with _client(server, Authorization="Bearer sk-test") as http:
            assert http.post("/chat/completions", json=_body("Hello.")).status_code == 200
        assert server.emulator.requests_by_status == {401: 3, 200: 1}


def test_directive_in_last_user_message_gives_400(client: httpx.Client) -> None:
    """`[[emulator:400]]` in the last user message, as a string or a text part, gets a 400."""
    as_string = _body(f"Please fail {DIRECTIVE_400} now.")
    as_parts = {
        "model": "qwen3-8b",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "text", "text": f"Describe this. {DIRECTIVE_400}"},
                ],
            }
        ],
    }
    for body in (as_string, as_parts):
        response = client.post("/chat/completions", json=body)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "messages"
        assert error["code"] == "invalid_request"
        assert DIRECTIVE_400 in error["message"]

    # Only the last user message counts: an earlier one carrying the directive is answered normally.
    earlier = {
        "model": "qwen3-8b",
        "messages": [
            {"role": "user", "content": DIRECTIVE_400},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": "Now answer."},
        ],
    }
    assert client.post("/chat/completions", json=earlier).status_code == 200


@pytest.mark.parametrize(
    ("body", "param", "message_part"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "'model'"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages", "'messages'"),
        (json.dumps({"model": "m", "messages": ["x"]}).encode(), "messages[0]", "'messages[0]'"),
        (json.dumps(_body("x", max_tokens=0)).encode(), "max_tokens", "'max_tokens'"),
        (json.dumps(_body("x", n=11)).encode(), "n", "'n'"),
    ],
)
def test_invalid_body_gives_400_saying_what_is_wrong(
    client: httpx.Client, body: bytes, param: str | None, message_part: str
) -> None:
    """A body that is not a valid chat-completions request gets a 400 naming the problem."""
    response = client.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] is None
    assert message_part in error["message"]


def test_rate_429_gives_429_with_retry_headers() -> None:
    """With rate_429=1.0 every request gets a rate_limit_exceeded 429 with retry-after-ms and retry-after."""
    with EmulatorServer(EmulatorConfig(rate_429=1.0, retry_after_s=1.2)) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == 429
    assert float(response.headers["retry-after-ms"]) == 1200.0
    assert response.headers["retry-after"] == "2"  # whole seconds, rounded up
    assert response.json()["error"] == {
        "message": "Rate limit reached for requests (emulated).",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_rate_500_gives_500() -> None:
    """With rate_500=1.0 every request gets an OpenAI-shaped server_error 500."""
    with EmulatorServer(EmulatorConfig(rate_500=1.0)) as server, _client(server) as http:
        response = http.post("/chat/completions", json=_body("Hello."))
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert server.emulator.answered == {}


def test_fault_pattern_is_reproducible_across_servers() -> None:
    """With a fixed seed, two servers fail the same requests on the same attempts."""
    bodies = [_body(f"Row {i}.") for i in range(20)] * 2  # the second pass is every request's 2nd attempt
    patterns = []
    for _ in range(2):
        with EmulatorServer(EmulatorConfig(rate_429=0.5, seed=7)) as server, _client(server) as http:
            patterns.append([http.post("/chat/completions", json=body).status_code for body in bodies])
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 429}
    # Attempts are part of the draw: a request that failed once is not bound to fail forever.
    assert patterns[0][:20] != patterns[0][20:]


def test_answered_counts_200s_per_request_key() -> None:
    """`answered` counts 200s per sha256 key of the raw body, and `requests_by_status` counts every reply."""
    first = json.dumps(_body("First.")).encode()
    second = json.dumps(_body("Second.")).encode()
    failing = json.dumps(_body(DIRECTIVE_400)).encode()
    with EmulatorServer() as server, _client(server) as http:
        for body in (first, first, second, failing):
            http.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    keys = [hashlib.sha256(body).hexdigest()[:32] for body in (first, second)]
    assert server.emulator.answered == {keys[0]: 2, keys[1]: 1}
    assert server.emulator.requests_by_status == {200: 3, 400: 1}


def test_latency_delays_every_answer() -> None:
    """latency_s delays answers, errors included."""
    with EmulatorServer(EmulatorConfig(latency_s=0.1, rate_500=1.0)) as server, _client(server) as http:
        started = time.perf_counter()
        assert http.post("/chat/completions", json=_body("Slow.")).status_code == 500
        assert time.perf_counter() - started >= 0.1


def test_health_models_and_path_without_v1(server: EmulatorServer) -> None:
    """/health answers ok, /v1/models lists the Qwen models and /chat/completions works without /v1."""
    root = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, trust_env=False, timeout=5.0) as http:
        assert http.get("/health").json() == {"status": "ok"}
        models = http.get("/v1/models").json()
        assert models["object"] == "list"
        assert [model["id"] for model in models["data"]] == list(MODELS)
        assert http.post("/chat/completions", json=_body("Hi.")).status_code == 200


def test_stop_is_idempotent_and_restart_is_refused() -> None:
    """stop() can be called twice, base_url stays readable, and a stopped server cannot start again."""
    server = EmulatorServer()
    with pytest.raises(RuntimeError, match="after start"):
        _ = server.base_url
    url = server.start()
    assert server.start() == url  # already running: same URL
    server.stop()
    server.stop()
    assert server.base_url == url
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        server.start()


def test_port_in_use_raises_in_caller() -> None:
    """Starting on a port that is taken raises the OSError in the calling thread."""
    with EmulatorServer() as running:
        port = int(running.base_url.rsplit(":", 1)[1].removesuffix("/v1"))
        with pytest.raises(OSError, match=str(port)):
            EmulatorServer(port=port).start()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_s": -0.1}, "latency_s"),
        ({"latency_s": float("inf")}, "latency_s"),
        ({"rate_429": 1.5}, "rate_429"),
        ({"rate_429": -0.1}, "rate_429"),
        ({"rate_500": float("nan")}, "rate_500"),
        ({"rate_429": 0.6, "rate_500": 0.6}, "rate_500"),
        ({"retry_after_s": -1.0}, "retry_after_s"),
        ({"api_key": ""}, "api_key"),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """An out-of-range config value raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        EmulatorConfig(**kwargs)


def test_hold_after_answers_n_requests_then_holds_the_rest() -> None:
    """With hold_after=2, two requests are answered and a third gets no reply until the server stops."""
    with EmulatorServer(EmulatorConfig(hold_after=2)) as server, httpx.Client(timeout=5) as client:
        url = f"{server.base_url}/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post(url, json=body).status_code == 200
        assert client.post(url, json=body).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            client.post(url, json=body, timeout=0.3)
        assert sum(server.emulator.answered.values()) == 2
