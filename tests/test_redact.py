"""Secrets out of every string batchrun writes, and untrusted text cut to a bounded excerpt."""

from __future__ import annotations

import logging

from batchrun.records import Reply, Usage
from batchrun.redact import excerpt, hiding, redact, redact_data, redact_reply, safe_url, secrets_of
from batchrun.report.runlog import Redact

KEY = "sk-abcdefghijklmnop"


def test_secrets_are_the_key_the_urls_credentials_and_auth_headers() -> None:
    """The key, base_url's password (as written and decoded), auth headers' tokens; not short strings."""
    found = secrets_of(
        KEY,
        "https://alice:p%40ss-word-1@api.example.test/v1",
        {"Authorization": "Bearer tok-123456789", "X-Trace": "not-a-secret-at-all", "api-key": "short"},
    )
    assert KEY in found
    assert {"p%40ss-word-1", "p@ss-word-1", "alice:p%40ss-word-1"} <= set(found)
    assert {"Bearer tok-123456789", "tok-123456789"} <= set(found)
    assert "not-a-secret-at-all" not in found
    assert "short" not in found


def test_redact_replaces_every_secret_hidden_now() -> None:
    """Inside `hiding`, `redact` replaces each secret with ***; outside it, text is left as it is."""
    text = f"auth: Bearer {KEY}; again {KEY}"
    with hiding([KEY]):
        assert redact(text) == "auth: Bearer ***; again ***"
    assert redact(text) == text


def test_an_excerpt_is_redacted_before_it_is_cut() -> None:
    """A key straddling the cut leaves no piece of itself: redaction comes first, then 200 characters."""
    body = ("x" * 195 + KEY + " tail").encode()
    with hiding([KEY]):
        cut = excerpt(body)
    assert len(cut) == 200
    assert "sk-" not in cut
    assert excerpt("a\n  b\tc") == "a b c"


def test_a_reply_is_redacted_field_by_field() -> None:
    """Completion, reasoning, tool calls, model, id and every choice lose the key; other fields stay."""
    reply = Reply(
        completion=f"you sent {KEY}",
        finish_reason="stop",
        usage=Usage(prompt_tokens=1),
        model=KEY,
        response_id="id-1",
        reasoning=KEY,
        tool_calls=f'[{{"arguments": "{KEY}"}}]',
        completions=(f"a {KEY}", None),
    )
    with hiding([KEY]):
        clean = redact_reply(reply)
        untouched = Reply(completion="fine", finish_reason="stop", usage=Usage())
        assert redact_reply(untouched) is untouched
    assert KEY not in repr(clean)
    assert (clean.completion, clean.model, clean.response_id) == ("you sent ***", "***", "id-1")
    assert clean.completions == ("a ***", None)


def test_summary_data_is_redacted_everywhere_in_it() -> None:
    """Strings nested in dicts and lists, keys included, lose the secret; numbers stay."""
    data = {"message": f"stop {KEY}", "by_model": [{"model": KEY, "ok": 3}], KEY: 1}
    with hiding([KEY]):
        assert redact_data(data) == {"message": "stop ***", "by_model": [{"model": "***", "ok": 3}], "***": 1}


def test_a_url_is_shown_without_its_credentials() -> None:
    """User info and query values are masked; scheme, host, port and path are kept."""
    shown = safe_url("https://alice:secret@api.example.test:8443/v1/chat?key=abc&x=1")
    assert shown == "https://***@api.example.test:8443/v1/chat?key=***&x=***"
    assert safe_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_the_log_filter_redacts_the_key_and_the_runs_secrets() -> None:
    """The log filter hides the key it was given and, during a run, every secret of that run."""
    record = logging.LogRecord(
        "batchrun", logging.INFO, __file__, 1, "a %s and %s", (KEY, "pw-12345678"), None
    )
    with hiding(["pw-12345678"]):
        assert Redact(KEY).filter(record)
    assert record.getMessage() == "a *** and ***"
