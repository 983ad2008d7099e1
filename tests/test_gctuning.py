"""The collector's tuning during a run (batchrun/engines/gctuning.py): applied inside, restored after."""

from __future__ import annotations

import gc
import threading

import pytest

from batchrun.engines.gctuning import YOUNG_THRESHOLD, quiet_gc


def test_inside_a_run_the_collector_is_tuned_and_after_it_restored() -> None:
    """Objects alive at the start are frozen and young collections rarer; both undone at the end."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with quiet_gc():
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_overlapping_runs_restore_the_settings_only_when_the_last_one_ends() -> None:
    """Two runs in two threads, the first ending first: the tuning lasts until the second ends."""
    before = gc.get_threshold()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[tuple[tuple[int, ...], bool]] = []

    def second() -> None:
        assert first_in.wait(5)
        with quiet_gc():
            second_in.set()
            assert first_out.wait(5)
            seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))

    thread = threading.Thread(target=second)
    thread.start()
    with quiet_gc():
        first_in.set()
        assert second_in.wait(5)  # both blocks are open at once
    first_out.set()
    thread.join(5)
    assert seen == [((YOUNG_THRESHOLD, *before[1:]), True)]
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_a_programs_own_settings_are_kept() -> None:
    """Objects the program froze stay frozen after the run; a collector switched off stays off."""
    before = gc.get_threshold()
    try:
        gc.freeze()
        gc.set_threshold(0)
        with quiet_gc():
            assert gc.get_threshold()[0] == 0
        assert gc.get_freeze_count() > 0  # not unfrozen by the run
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_an_error_inside_still_restores_the_settings() -> None:
    """A run that raises leaves the collector as it found it."""
    before = gc.get_threshold()
    with pytest.raises(RuntimeError, match="boom"), quiet_gc():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
