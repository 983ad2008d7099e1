"""The emulator's replies follow the prompt where it offers choices: offered words, a scale, a JSON shape."""

from __future__ import annotations

import json
import statistics
from typing import Any

import polars as pl

from batchrun.emulator.answers import Options, answer
from batchrun.emulator.choices import error_rate
from batchrun.emulator.replies import reply_text
from tests.conftest import SAMPLE_DATA

REVIEWS = pl.read_ndjson(SAMPLE_DATA / "reviews.jsonl").to_dicts()
JSON_SHAPE = (
    "You label product reviews. Reply with one JSON object and nothing else:\n"
    '{"sentiment": "positive" | "negative" | "mixed", "topics": [up to 3 short nouns], '
    '"wants_refund": true | false}'
)


def reply(system: str, user: str, *, model: str = "qwen3-max", limit: int = 16, **options: Any) -> str:
    """The emulator's first reply text to a system and a user message."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    text = answer("key", model, messages, limit, Options(**options)).texts[0]
    assert text is not None
    return text


def label(row: dict[str, Any], model: str = "qwen3-max") -> str:
    """The demo job's prompt for `row`, answered."""
    ask = "Answer with one word: positive, negative or mixed."
    user = f"Review of {row['product']}: {row['title']}\n{row['text']}\n{ask}"
    return reply("You label the sentiment of product reviews.", user, model=model)


def test_offered_words_are_answered_with_one_of_them_by_the_texts_sentiment() -> None:
    """Every review gets one of the offered words, the same one each time, and the labels follow the stars:
    reviews labelled positive have more stars on average than mixed ones, which have more than negative."""
    labels = [label(row) for row in REVIEWS]
    assert set(labels) == {"positive", "negative", "mixed"}
    assert labels[:20] == [label(row) for row in REVIEWS[:20]]
    pairs = list(zip(REVIEWS, labels, strict=True))
    stars = {name: statistics.mean(r["stars"] for r, said in pairs if said == name) for name in set(labels)}
    assert stars["positive"] > stars["mixed"] + 0.5 > stars["negative"] + 1.0


def test_a_question_offering_words_and_a_yes_or_no_are_answered_in_kind() -> None:
    """ "Is this review positive, negative or mixed?" and "yes or no" questions get one of their words."""
    assert (
        reply(
            "Reply with one lowercase word.", "I love it, works great.\nIs this positive, negative or mixed?"
        )
        == "positive"
    )
    assert (
        reply("", "Broke after a week, want a refund.\nAnswer with one word: positive or negative.")
        == "negative"
    )
    assert reply("", "Does the customer want a refund? Answer yes or no.\nReview: fine.") in ("yes", "no")


def test_a_scale_is_answered_with_a_number_in_it_close_to_the_stars() -> None:
    """A 1-5 star question gets a digit from 1 to 5; most answers are within one star of the review's."""
    system = "You rate product reviews. Answer with a single digit from 1 to 5 and nothing else."
    guesses = [
        int(reply(system, f"{row['title']}\n{row['text']}\n\nHow many stars (1-5)?", limit=2))
        for row in REVIEWS
    ]
    assert set(guesses) <= {1, 2, 3, 4, 5}
    close = sum(abs(g - row["stars"]) <= 1 for g, row in zip(guesses, REVIEWS, strict=True))
    assert close / len(REVIEWS) > 0.7


def test_models_err_on_different_rows_at_rates_of_their_own() -> None:
    """Two models agree on most labels, not all, each erring at a rate fixed by its name (8-27%)."""
    first = [label(row, "qwen3-max") for row in REVIEWS]
    second = [label(row, "qwen-max") for row in REVIEWS]
    agree = sum(a == b for a, b in zip(first, second, strict=True)) / len(REVIEWS)
    assert 0.5 < agree < 1.0
    assert 0.08 <= error_rate("qwen3-max") <= 0.27


def test_a_json_mode_prompt_showing_a_shape_gets_an_object_of_that_shape() -> None:
    """A JSON-mode prompt's `"a" | "b"`, `[up to 3 ...]` and `true | false` fields come back as one of the
    words, a list of at most three strings and a boolean; a review asking for a refund says so."""
    for row in REVIEWS[:30]:
        value = json.loads(
            reply(JSON_SHAPE, f"Title: {row['title']}\nReview: {row['text']}", limit=80, json_object=True)
        )
        assert set(value) == {"sentiment", "topics", "wants_refund"}
        assert value["sentiment"] in ("positive", "negative", "mixed")
        assert len(value["topics"]) <= 3
        assert all(isinstance(t, str) for t in value["topics"])
        assert isinstance(value["wants_refund"], bool)
    refund = json.loads(
        reply(JSON_SHAPE, "Review: It broke. I want a refund now.", limit=80, json_object=True)
    )
    assert refund["wants_refund"] is True
    assert refund["sentiment"] == "negative"


def test_a_json_example_in_the_prompt_is_followed_and_a_plain_prompt_keeps_its_sentence() -> None:
    """A JSON example gives the keys and kinds of the reply; a prompt with no choice and no shape gets the
    usual sentence, and JSON mode without a shape the usual `{"answer": ...}`."""
    value = json.loads(
        reply('Reply like {"spam": false, "score": 0.5, "reason": "why"}', "Buy now!!", json_object=True)
    )
    assert [type(value[k]) for k in ("spam", "score", "reason")] == [bool, float, str]
    plain = [
        {"role": "system", "content": "You write."},
        {"role": "user", "content": "Tell me about rivers."},
    ]
    assert reply("You write.", "Tell me about rivers.", limit=1000) == reply_text("qwen3-max", plain)
    assert set(json.loads(reply("You write JSON.", "Tell me about rivers.", json_object=True))) == {"answer"}
