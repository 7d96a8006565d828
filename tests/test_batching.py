"""Dynamic batching (serving/batching.py): concurrent requests share model calls, each gets its own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from op_classifier.serving.batching import Batcher

SHAPE = (2, 2, 3)


class Recorded:
    """A model whose answer for an image is its first pixel's value in every class; it records its calls."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[int] = []
        self.seconds = seconds

    def forward(self, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        time.sleep(self.seconds)
        if (np.asarray(images) == 13).any():
            raise RuntimeError("the model fails on 13")
        return np.repeat(np.asarray(images, np.float32).reshape(len(images), -1)[:, :1], 4, axis=1)


def _images(*values: int) -> np.ndarray:
    return np.stack([np.full(SHAPE, value, np.uint8) for value in values])


def _concurrently(call, arguments: list) -> list:
    """call(argument) for each argument from its own thread, all released at once; results or exceptions."""
    start = threading.Barrier(len(arguments))

    def one(argument: object) -> object:
        start.wait()
        try:
            return call(argument)
        except Exception as error:  # noqa: BLE001 - the test looks at which requests failed
            return error

    with ThreadPoolExecutor(len(arguments)) as pool:
        return list(pool.map(one, arguments))


def test_concurrent_requests_share_calls_and_each_gets_its_own_rows() -> None:
    model = Recorded(seconds=0.05)
    batcher = Batcher(model.forward, window_s=0.2, max_batch=64)
    values = [value for value in range(1, 18) if value != 13]  # 13 fails the model (the next test)
    requests = [_images(value, value) if value % 3 == 0 else _images(value) for value in values]
    answers = _concurrently(batcher, requests)
    for request, answer in zip(requests, answers, strict=True):
        assert answer.shape == (len(request), 4)
        np.testing.assert_array_equal(answer[:, 0], request[:, 0, 0, 0])  # its own images, in its order
    assert sum(model.calls) == sum(len(r) for r in requests) and len(model.calls) < len(requests), model.calls


def test_a_batch_never_passes_max_batch_unless_one_request_is_larger() -> None:
    model = Recorded(seconds=0.02)
    batcher = Batcher(model.forward, window_s=0.3, max_batch=4)
    _concurrently(batcher, [_images(value) for value in range(12)])
    assert max(model.calls) <= 4 and sum(model.calls) == 12
    np.testing.assert_array_equal(batcher(_images(*range(9)))[:, 0], np.arange(9))  # alone, in one call
    assert model.calls[-1] == 9


def test_a_lone_request_waits_the_window_at_most() -> None:
    """With nothing else arriving, a request is answered at once: it never waits for a full batch (a broken
    batcher would block here until the future's timeout), nor the window (nothing is being parsed)."""
    batcher = Batcher(Recorded().forward, window_s=2.0, max_batch=32)
    started = time.perf_counter()
    answer = batcher(_images(7))
    waited = time.perf_counter() - started
    assert answer[0, 0] == 7 and waited < 1.5, waited


def test_a_batch_waits_for_a_request_still_being_parsed_up_to_the_window() -> None:
    model = Recorded()
    batcher = Batcher(model.forward, window_s=2.0, max_batch=32)
    parsed = threading.Event()

    def slow_request() -> np.ndarray:
        with batcher.incoming():  # parsing, 0.3 s
            parsed.set()
            time.sleep(0.3)
        return batcher(_images(2))

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(slow_request)
        parsed.wait()
        mine = batcher(_images(1))
        assert mine[0, 0] == 1 and other.result()[0, 0] == 2
    assert model.calls == [2]  # one call for both


def test_the_model_failing_fails_only_the_requests_of_its_call() -> None:
    model = Recorded()
    batcher = Batcher(model.forward, window_s=0.0, max_batch=32)
    with pytest.raises(RuntimeError, match="fails on 13"):
        batcher(_images(13))
    assert batcher(_images(5))[0, 0] == 5  # the batcher thread lives on
