"""Build the next training batches on a background thread while the compiled step runs.

A task that generates its data on the fly (the code-edit stream draws, verifies and tokenises
every item in Python: about 0.35 s per 16 rows on the 2-core CPU, as long as a training step)
would otherwise leave the step waiting. Batches are pure functions of the step
(``train_batch(step=...)``), so building them ahead changes nothing but the wall time.

XLA releases the GIL while a step runs, so the thread's Python work overlaps it. ``depth``
batches are built ahead (2: one ready, one in progress; ``train.prefetch``); ``depth=0``
builds each batch in the loop when it is needed, with no thread. An exception in the thread
is raised in the trainer at the step that needed the batch, with its own traceback.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator


class Prefetch:
    """Iterate ``make(step)`` for ``step`` in ``steps``, ``depth`` steps ahead on a thread."""

    def __init__(self, make: Callable[[int], object], steps: range, depth: int = 2):
        self._stop = threading.Event()
        self._inline = iter((s, make(s)) for s in steps) if depth <= 0 else None
        if self._inline is not None:
            return
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._run, args=(make, steps), daemon=True,
                                        name="batch-prefetch")
        self._thread.start()

    def _run(self, make, steps) -> None:
        for step in steps:
            try:
                item = (step, make(step), None)
            except BaseException as e:  # handed to the consumer, raised there
                item = (step, None, e)
            while not self._stop.is_set():
                try:
                    self._q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or item[2] is not None:
                return

    def __iter__(self) -> Iterator[tuple[int, object]]:
        return self

    def __next__(self) -> tuple[int, object]:
        if self._inline is not None:
            return next(self._inline)
        while True:
            try:
                step, batch, err = self._q.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise StopIteration from None
        if err is not None:
            self.close()
            raise err
        return step, batch

    def close(self) -> None:
        self._stop.set()
        if self._inline is None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
