"""Replies that follow the prompt where it offers choices, so a demo's labels and scores mean something.

- A prompt that offers words ("Answer with one word: positive, negative or mixed", "Is this review
  positive or negative?") gets one of those words; one that asks for a number in a small range ("a single
  digit from 1 to 5", "How many stars (1-5)?") gets a number in it.
- A JSON-mode prompt that shows the object it wants (`{"sentiment": "positive" | "negative", "topics": [up
  to 3 short nouns], "wants_refund": true | false}`, or a plain JSON example) gets an object of that shape.

The pick is a function of the text, deterministic: a small word list scores the last user message's
sentiment (positive and negative words), which orders sentiment labels and numeric scales; other word
choices are picked by a hash. Each model then errs on a share of rows of its own (8-27%, from a hash of
its name), moving one step along the choices: two models give different, repeatable answers, and a score
against the data is a real number. It says nothing of how a real model would score.

Only the system message and the last user message are read, their first `MAX_PROMPT_CHARS` characters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchrun.emulator.replies import content_text

MAX_PROMPT_CHARS = 20_000
MAX_SHAPE_CHARS = 2_000  # the longest object description read from a prompt
MAX_OPTIONS = 12
MAX_RANGE = 10  # 1-10 is a scale; 1-100 is not a choice
LIST_ITEMS = 3  # items in a list the shape does not size ("up to N")

# fmt: off
_POSITIVE = frozenset((
    "love", "loved", "loves", "great", "excellent", "perfect", "perfectly", "amazing", "happy", "recommend",
    "recommended", "best", "good", "nice", "works", "worth", "quick", "fast", "easy", "comfortable",
    "sturdy", "solid", "smooth", "smoothly", "quiet", "better", "fantastic", "awesome", "pleased", "glad",
    "reliable", "beautiful", "impressed", "impressive", "favourite", "favorite", "superb", "brilliant",
    "wonderful", "delighted", "satisfied", "exactly", "well", "flawless", "highly", "value", "fits",
    "bien", "gut", "bueno", "👍", "⭐", "😍", "❤️", "🙂",
))
_NEGATIVE = frozenset((
    "disappointed", "disappointing", "broke", "broken", "breaks", "return", "returned", "returning",
    "refund", "poor", "poorly", "worst", "bad", "terrible", "awful", "cheap", "flimsy", "stopped", "died",
    "waste", "problem", "problems", "slow", "noisy", "loud", "leaks", "leaked", "leaking", "useless",
    "hate", "defective", "cracked", "fails", "failed", "annoying", "pain", "wobbly", "uncomfortable",
    "rattles", "worse", "mediocre", "overpriced", "junk", "faulty", "unfortunately", "sadly", "issue",
    "issues", "avoid", "regret", "regrets", "complaint", "complaints", "fuss", "mal", "schlecht", "malo",
    "👎", "😡", "😞", "🙁",
))
# A word one of these comes just before means the opposite: "no complaints", "not great", "without fuss".
_NEGATORS = frozenset((
    "no", "not", "never", "without", "don't", "doesn't", "didn't", "isn't", "wasn't", "won't", "hardly",
    "nothing", "zero",
))
_UP = frozenset(("positive", "good", "yes", "pos", "favorable", "favourable", "true", "happy", "great"))
_DOWN = frozenset(("negative", "bad", "no", "neg", "unfavorable", "unfavourable", "false", "unhappy", "poor"))
_MIDDLE = frozenset(("mixed", "neutral", "both", "unsure", "unclear", "ambivalent", "average", "ok", "okay"))
_STOPWORDS = frozenset((
    "about", "after", "again", "also", "because", "been", "before", "being", "came", "could", "does",
    "doing", "from", "have", "having", "into", "just", "like", "more", "most", "much", "only", "other",
    "over", "really", "review", "same", "some", "such", "than", "that", "their", "them", "then", "there",
    "these", "they", "this", "those", "very", "want", "wants", "were", "what", "when", "which", "while",
    "will", "with", "would", "your", "product", "title", "answer", "word", "bought", "ordered", "still",
))
# fmt: on
_NOT_TOPICS = _STOPWORDS | _POSITIVE | _NEGATIVE
_WORD = re.compile(r"[^\W\d_][\w'-]*|[\U0001F300-\U0001FAFF\u2B50\u2764]", re.UNICODE)
_OPTION = r"[A-Za-z][\w'-]{0,29}"
_LIST = re.compile(rf"\b({_OPTION})((?:\s*,\s*{_OPTION})*)\s*,?\s+or\s+({_OPTION})\b")
_RANGE = re.compile(r"\b(\d{1,2})\s*(?:-|–|to)\s*(\d{1,2})\b")
_CUE = re.compile(r"answer|reply|respond|label|classify|one word|one of|choose|pick|is (?:it|this)|\?", re.I)
_SCALE = re.compile(r"digit|number|score|rating|rate|stars?\b|scale", re.I)
_SENTENCE = re.compile(r"[^.?!\n]*(?:[.?!]+|\n|$)")


@dataclass(frozen=True, slots=True)
class Reading:
    """What the prompt says: its subject's sentiment words, and its text for hashing."""

    text: str
    positive: int
    negative: int

    @property
    def score(self) -> float:
        """0 (all negative words) to 1 (all positive); 0.5 with none of either."""
        total = self.positive + self.negative
        return 0.5 if total == 0 else self.positive / total


def read(messages: Sequence[Any]) -> tuple[str, Reading]:
    """The instructions (system message, then the last user message) and a reading of the last user one."""
    system = " ".join(
        content_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "system"
    )
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"),
        {"content": ""},
    )
    user = content_text(last.get("content"))[:MAX_PROMPT_CHARS]
    words = [w.lower() for w in _WORD.findall(user)]
    positive = negative = 0
    for i, word in enumerate(words):
        good, bad = word in _POSITIVE, word in _NEGATIVE
        if (good or bad) and _NEGATORS.intersection(words[max(0, i - 2) : i]):
            good, bad = bad, good
        positive += good
        negative += bad
    return system[:MAX_PROMPT_CHARS] + "\n" + user, Reading(user, positive, negative)


def offered(instructions: str) -> list[str] | None:
    """The words or numbers the prompt asks to answer with; None when it offers no choice.

    The last sentence that offers some wins: instructions usually come after the text they are about.
    """
    found: list[str] | None = None
    for sentence in _SENTENCE.findall(instructions):
        if _SCALE.search(sentence):
            for low, high in _RANGE.findall(sentence):
                lo, hi = int(low), int(high)
                if 0 < hi - lo <= MAX_RANGE:
                    found = [str(n) for n in range(lo, hi + 1)]
        if _CUE.search(sentence):
            for match in _LIST.finditer(sentence):
                words = [match.group(1), *re.findall(r"[\w'-]+", match.group(2)), match.group(3)]
                if len(words) <= MAX_OPTIONS:
                    found = words
    return found


def pick(options: Sequence[str], reading: Reading, model: str) -> str:
    """One of `options` for the text read: by its sentiment where the options are labels or a scale,
    else by a hash; then moved one step (towards the middle, for labels) for the model's share of
    mistakes."""
    order = _order(options)
    index = _rank(order, reading)
    digest = _hash(model, reading.text)
    if len(order) > 1 and digest[0] / 256 < error_rate(model):
        step = 1 if digest[1] % 2 else -1
        index = index + step if 0 <= index + step < len(order) else index - step
    return order[index]


def error_rate(model: str) -> float:
    """The share of answers a model moves off the text's own answer: 8-27%, fixed by its name."""
    return 0.08 + _hash(model, "")[0] % 20 / 100


def _order(options: Sequence[str]) -> list[str]:
    """The options from most negative to most positive where they are sentiment labels (a scale as it is;
    other words in their order), so that one step is a near miss."""
    if all(o.lstrip("-").isdigit() for o in options):
        return sorted(options, key=int)
    polarity = {**dict.fromkeys(_DOWN, 0), **dict.fromkeys(_MIDDLE, 1), **dict.fromkeys(_UP, 2)}
    if not any(o.lower() in polarity for o in options):
        return list(options)
    return sorted(options, key=lambda o: polarity.get(o.lower(), 1))


def _rank(order: Sequence[str], reading: Reading) -> int:
    """The index in `order` (see `_order`) the text's sentiment points to."""
    lowered = [o.lower() for o in order]
    if all(o.lstrip("-").isdigit() for o in lowered):  # a scale: the score along it
        return round(reading.score * (len(order) - 1))
    up = next((i for i, o in enumerate(lowered) if o in _UP), None)
    down = next((i for i, o in enumerate(lowered) if o in _DOWN), None)
    middle = next((i for i, o in enumerate(lowered) if o in _MIDDLE), None)
    if up is None and down is None:
        return _hash("pick", reading.text)[0] % len(order)
    both = reading.positive and reading.negative and abs(reading.positive - reading.negative) <= 1
    if middle is not None and (both or reading.positive == reading.negative):
        return middle
    if reading.score > 0.5 and up is not None:
        return up
    if reading.score < 0.5 and down is not None:
        return down
    return up if up is not None and _hash("tie", reading.text)[0] % 2 else (down if down is not None else 0)


def shaped(instructions: str, reading: Reading, model: str) -> Any | None:
    """An object of the shape the prompt shows (a JSON example or `"a" | "b"` alternatives); None when it
    shows none that can be read."""
    start = instructions.find("{")
    if start < 0:
        return None
    end, depth = start, 0
    for end in range(start, min(len(instructions), start + MAX_SHAPE_CHARS)):
        depth += {"{": 1, "}": -1}.get(instructions[end], 0)
        if depth == 0:
            break
    if depth:
        return None
    text = instructions[start : end + 1]
    try:
        example = json.loads(text)
    except ValueError:
        try:
            shape, _ = _Shape(text).object(0)
        except ValueError:
            return None
        return _fill(shape, reading, model, "")
    return _fill(_of_example(example), reading, model, "")


# A shape: ("enum", options) | ("bool",) | ("list", size) | ("number",) | ("text",) | ("object", {k: shape})
Shape = tuple[Any, ...]


def _of_example(value: Any) -> Shape:
    if isinstance(value, dict):
        return ("object", {str(k): _of_example(v) for k, v in value.items()})
    if isinstance(value, bool):
        return ("bool",)
    if isinstance(value, int | float):
        return ("number",)
    if isinstance(value, list):
        return ("list", LIST_ITEMS)
    return ("text",)


def _fill(shape: Shape, reading: Reading, model: str, key: str) -> Any:
    kind = shape[0]
    if kind == "object":
        return {name: _fill(sub, reading, f"{model}/{name}", name) for name, sub in shape[1].items()}
    if kind == "enum":
        chosen = pick([json.dumps(o) if not isinstance(o, str) else o for o in shape[1]], reading, model)
        return next(o for o in shape[1] if (json.dumps(o) if not isinstance(o, str) else o) == chosen)
    if kind == "bool":
        # True when the text speaks of what the key names (`wants_refund`: a refund), else False.
        stems = [w[:5] for w in re.split(r"[_\W]+", key.lower()) if len(w) > 3 and w not in _STOPWORDS]
        text = reading.text.lower()
        return bool(stems) and any(stem in text for stem in stems)
    if kind == "list":
        return _topics(reading.text, shape[1])
    if kind == "number":
        return round(reading.score * 10) / 2
    return " ".join(_topics(reading.text, 6)) or "none"


def _topics(text: str, count: int) -> list[str]:
    """The text's first distinct content words in lower case, names left out (a stand-in for "topics")."""
    seen: list[str] = []
    for word in _WORD.findall(text):
        lower = word.lower().strip("'-")
        if word[0].isupper() or len(lower) < 4 or lower in _NOT_TOPICS:
            continue
        if lower not in seen:
            seen.append(lower)
        if len(seen) == count:
            break
    return seen


class _Shape:
    """A reader of `{"key": "a" | "b", "list": [up to 3 nouns], "flag": true | false, ...}`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def object(self, at: int) -> tuple[Shape, int]:
        at = self._expect(at, "{")
        fields: dict[str, Shape] = {}
        while True:
            at = self._space(at)
            if self.text[at] == "}":
                return ("object", fields), at + 1
            key, at = self._string(at)
            at = self._expect(at, ":")
            fields[key], at = self._value(at)
            at = self._space(at)
            if self.text[at] == ",":
                at += 1

    def _value(self, at: int) -> tuple[Shape, int]:
        options: list[Any] = []
        while True:
            at = self._space(at)
            char = self.text[at]
            if char == "{":
                shape, at = self.object(at)
                return shape, at
            if char == "[":
                close = self.text.index("]", at)
                size = re.search(r"(\d+)", self.text[at:close])
                return ("list", int(size.group(1)) if size else LIST_ITEMS), close + 1
            if char == '"':
                value, at = self._string(at)
                options.append(value)
            else:
                match = re.compile(r"[\w.+-]+").match(self.text, at)
                if match is None:
                    raise ValueError(f"unexpected {char!r}")
                word, at = match.group(), match.end()
                options.append({"true": True, "false": False, "null": None}.get(word, word))
            at = self._space(at)
            if self.text[at] != "|":
                return _kind(options), at
            at += 1

    def _string(self, at: int) -> tuple[str, int]:
        at = self._expect(at, '"')
        end = self.text.index('"', at)
        return self.text[at:end], end + 1

    def _expect(self, at: int, char: str) -> int:
        at = self._space(at)
        if self.text[at] != char:
            raise ValueError(f"expected {char!r}")
        return at + 1

    def _space(self, at: int) -> int:
        while at < len(self.text) and self.text[at].isspace():
            at += 1
        if at >= len(self.text):
            raise ValueError("the object ends early")
        return at


def _kind(options: list[Any]) -> Shape:
    """What a list of alternatives asks for: true | false, a word naming a type, or one of them."""
    if set(map(repr, options)) <= {"True", "False"}:
        return ("bool",)
    if len(options) == 1 and isinstance(options[0], str):
        word = options[0].lower()
        if word in ("number", "integer", "float", "int"):
            return ("number",)
        if word in ("boolean", "bool"):
            return ("bool",)
        return ("text",)
    return ("enum", options)


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "replace")).digest()
