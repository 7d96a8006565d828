"""Dynamic batching: requests that arrive together share one model call, as TensorFlow Serving's batcher.

A request's body is parsed and checked first (serve.parse), then its images go to the Batcher. One
thread runs the model: it takes the first waiting request and every other already waiting, and while
more requests are still being parsed (`incoming`) it waits for them up to the window (or until
max_batch images); then it calls the model once on all of them and gives each request its own rows. A
lone request does not wait at all; one among others, at most the window. A request's bad input is refused before it joins a batch,
so it never fails its neighbours; the model failing fails only the requests of that call.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


class Batcher:
    """Calls forward on the images of the requests gathered within window_s, at most max_batch at once."""

    def __init__(self, forward: Forward, window_s: float, max_batch: int) -> None:
        self.forward, self.window_s, self.max_batch = forward, window_s, max_batch
        self.batches: list[int] = []  # images per model call, the last 1,000 (the benchmark reads them)
        self._waiting: queue.SimpleQueue[tuple[np.ndarray, Future]] = queue.SimpleQueue()
        self._incoming, self._count_lock = 0, threading.Lock()
        threading.Thread(target=self._loop, name="batcher", daemon=True).start()

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Around a request's parsing: while any is on, a batch waits (up to the window) for its images."""
        with self._count_lock:
            self._incoming += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._incoming -= 1

    def submit(self, images: np.ndarray) -> Future:
        """A future of the model's rows for these images, computed with whatever arrives beside them."""
        answer: Future = Future()
        self._waiting.put((images, answer))
        return answer

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The model's rows for these images (waits for them)."""
        return self.submit(images).result()

    def _loop(self) -> None:
        while True:
            batch = [self._waiting.get()]
            deadline = time.perf_counter() + self.window_s
            rows = len(batch[0][0])
            while rows < self.max_batch:
                item = self._next(deadline)
                if item is None:
                    break
                batch.append(item)
                rows += len(item[0])
            self._run(batch)

    def _next(self, deadline: float) -> tuple[np.ndarray, Future] | None:
        """A request already waiting; else one still being parsed, if it comes before the deadline."""
        with contextlib.suppress(queue.Empty):
            return self._waiting.get_nowait()
        left = deadline - time.perf_counter()
        if left <= 0 or not self._incoming:
            return None
        with contextlib.suppress(queue.Empty):
            return self._waiting.get(timeout=left)
        return None

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            images = batch[0][0] if len(batch) == 1 else np.concatenate([np.asarray(i, np.float32) for i, _ in batch])
            out = np.asarray(self.forward(images))
        except BaseException as error:  # every request of this call gets the model's failure, none other
            for _, answer in batch:
                answer.set_exception(error)
            return
        self.batches = [*self.batches[-999:], len(images)]
        start = 0
        for part, answer in batch:
            answer.set_result(out[start : start + len(part)])
            start += len(part)
