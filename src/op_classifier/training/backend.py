"""What differs between Keras backends, in one place: the rest of the code is backend-agnostic Keras."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import keras


def set_random_seed(seed: int) -> None:
    """keras.utils.set_random_seed, without importing TensorFlow under another backend.

    Keras seeds TensorFlow too whenever it is installed, importing it (seconds, hundreds of MB) under
    JAX. Under another backend the import is refused while Keras seeds, so Keras takes TensorFlow for
    absent here: in this process it then also stops looking for TensorFlow tensors, which it could not be given.
    """
    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    with _without_tensorflow():
        keras.utils.set_random_seed(seed)


@contextlib.contextmanager
def _without_tensorflow() -> Iterator[None]:
    if "tensorflow" in sys.modules:  # already loaded by someone else: nothing to spare
        yield
        return
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError while this is set
    try:
        yield
    finally:
        del sys.modules["tensorflow"]
