"""The whole-input check: every row read and checked once before a run sends its first request.

A bad line or value found at row 900,000 must not stop a run that has paid for 899,999 requests, so the
input is read from end to end first, holding one batch at a time, and every row is put through the checks
rendering makes (`PromptSet.bad_rows`: unreadable lines, nulls in template columns, messages and values a
provider cannot take). With `[input] on_bad_row = "fail"` (the default) any bad row stops the job here
(exit 2), naming the first few by line or row and id; "skip" and "error" let the run go on, with a warning.

A template row can only be bad by a null (its params were checked at load), which polars finds column by
column, so a million template rows are checked in about the time it takes to read them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import InputError
from batchrun.inputs.prompts import BadRow, PromptSet
from batchrun.inputs.readers import NarrowSchema

MAX_EXAMPLES = 10  # bad rows named in a message; the rest are counted

log = logging.getLogger("batchrun")


@dataclass(frozen=True, slots=True)
class InputReport:
    """What the check found: rows read, how many cannot be sent, and the first of those."""

    path: Path
    rows: int
    bad: int
    examples: tuple[BadRow, ...]
    on_bad_row: str
    seconds: float

    def describe(self) -> str:
        """`N of M rows cannot be sent`, then one line per example, and how many more there are."""
        lines = [f"{self.bad:,} of {self.rows:,} rows cannot be sent:"]
        lines += [f"  {bad}" for bad in self.examples]
        if self.bad > len(self.examples):
            lines.append(f"  ... and {self.bad - len(self.examples):,} more")
        return "\n".join(lines)

    def enforce(self) -> None:
        """Raise `InputError` (exit 2) when bad rows must stop the job; else warn about them, if any."""
        if not self.bad:
            return
        if self.on_bad_row == "fail":
            raise InputError(
                self.path,
                f"{self.describe()}\nNothing was sent. Fix those rows, or set [input] on_bad_row = "
                '"skip" (leave them out) or "error" (write them as error rows) to run the others.',
            )
        what = "left out" if self.on_bad_row == "skip" else "written as error rows (invalid_input)"
        log.warning("%s: %s\nThey are %s ([input] on_bad_row).", self.path, self.describe(), what)


def check_input(prompts: PromptSet) -> InputReport:
    """Read and check every row of `prompts` (nothing is sent); it then knows its row count.

    A value that does not fit the column types read from the first rows widens them (from the whole file)
    and the check starts again, so the run that follows reads with the wider types.
    """
    started = time.monotonic()
    try:
        rows, bad, examples = _check(prompts)
    except NarrowSchema:
        prompts.reader.widen()
        rows, bad, examples = _check(prompts)
    prompts.rows = rows - bad if prompts.on_bad_row == "skip" else rows
    seconds = time.monotonic() - started
    return InputReport(prompts.path, rows, bad, tuple(examples), prompts.on_bad_row, seconds)


def _check(prompts: PromptSet) -> tuple[int, int, list[BadRow]]:
    rows = bad = 0
    examples: list[BadRow] = []
    for batch in prompts.reader.batches():
        rows += batch.frame.height
        for row in prompts.bad_rows(batch):
            bad += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(row)
    return rows, bad, examples
