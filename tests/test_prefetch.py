"""The trainer's batch prefetching thread (sandbox/core/prefetch.py): same batches, same order,
errors raised at the step that needed the batch, and a clean stop."""

from __future__ import annotations

import threading
import time

import pytest

from sandbox.core.prefetch import Prefetch


def test_yields_every_step_in_order_with_its_batch():
    with Prefetch(lambda s: {"step": s, "sq": s * s}, range(3, 40), depth=2) as ahead:
        got = list(ahead)
    assert [s for s, _ in got] == list(range(3, 40))
    assert all(b == {"step": s, "sq": s * s} for s, b in got)


def test_builds_ahead_while_the_consumer_works():
    built = []

    def make(s):
        built.append(s)
        return s

    with Prefetch(make, range(10), depth=2) as ahead:
        next(ahead)
        time.sleep(0.3)  # the consumer's "step": the thread fills the queue meanwhile
        assert len(built) >= 3  # the one consumed, plus two ready


def test_an_error_is_raised_at_the_step_that_needed_it():
    def make(s):
        if s == 5:
            raise ValueError("bad item at step 5")
        return s

    seen = []
    with pytest.raises(ValueError, match="bad item at step 5"), Prefetch(make, range(10)) as ahead:
        for s, _ in ahead:
            seen.append(s)
    assert seen == [0, 1, 2, 3, 4]


def test_leaving_early_stops_the_thread():
    ahead = Prefetch(lambda s: s, range(10**9), depth=2)
    with ahead:
        for s, _ in ahead:
            if s == 3:
                break
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
