"""PyTorch checkpoints read into numpy without torch, and without running any code they carry.

Both of torch.save's formats: the legacy one (five pickles in a row, then each storage's raw bytes)
and the zip one (torch >= 1.6: `<archive>/data.pkl` plus `<archive>/data/<key>`). A pickle can call
any importable function, so the unpickler accepts only what a state dict needs, as torch's own
`weights_only` loader does, and refuses any other global with one line naming it.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from op_classifier.errors import OpClassifierError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py's MAGIC_NUMBER
LEGACY_PROTOCOL = 1001
DTYPES = {  # torch's typed storages -> numpy's little-endian dtypes
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class CheckpointError(OpClassifierError):
    """The checkpoint cannot be read, or would run code if it were."""

    exit_code = 2


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: Any) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(shape), tuple(stride))


def _rebuild_parameter(tensor: _Tensor, *_: Any) -> _Tensor:
    return tensor


class _StorageType:
    """Stands in for torch.FloatStorage and its kin inside a persistent id."""

    def __init__(self, name: str) -> None:
        self.dtype = DTYPES[name]


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages become references to be filled in later."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"refusing to load: the checkpoint's pickle asks for {module}.{name}, not a state-dict type"
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointError(f"unreadable checkpoint: unknown persistent id {str(pid)[:80]}")
        return _Storage(str(pid[2]), pid[1].dtype)


def _unpickle(stream: BinaryIO) -> Any:
    try:
        return _SafeUnpickler(stream).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise CheckpointError(f"unreadable checkpoint: {type(error).__name__}: {str(error)[:120]}") from None


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a PyTorch state-dict checkpoint as a C-contiguous numpy array, by name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    where = f"{path}: "
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            tensors, storages = _read_zip(data)
        else:
            tensors, storages = _read_legacy(data)
        return {name: _materialize(tensor, storages, name) for name, tensor in tensors.items()}
    except CheckpointError as error:
        raise CheckpointError(where + str(error)) from None


def _state_dict(obj: Any) -> dict[str, _Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, _Tensor) for v in obj.values()):
        raise CheckpointError("not a state dict (a mapping of names to tensors)")
    return dict(obj)


def _read_legacy(data: bytes) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    stream = io.BytesIO(data)
    if _unpickle(stream) != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (no torch.save magic number)")
    if _unpickle(stream) != LEGACY_PROTOCOL:
        raise CheckpointError("unsupported PyTorch legacy protocol version")
    _unpickle(stream)  # system info: endianness and type sizes
    tensors = _state_dict(_unpickle(stream))
    keys = _unpickle(stream)
    dtypes = {t.storage.key: t.storage.dtype for t in tensors.values()}
    storages = {}
    for key in keys:
        head = stream.read(8)
        if len(head) < 8:
            raise CheckpointError("truncated: the storages end early")
        (count,) = struct.unpack("<q", head)
        dtype = np.dtype(dtypes.get(key, "u1"))
        raw = stream.read(count * dtype.itemsize)
        if len(raw) < count * dtype.itemsize:
            raise CheckpointError("truncated: the storages end early")
        storages[str(key)] = np.frombuffer(raw, dtype=dtype)
    return tensors, storages


def _read_zip(data: bytes) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
        pickled = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
        if pickled is None:
            raise CheckpointError("a zip file without <archive>/data.pkl: not a PyTorch checkpoint")
        prefix = pickled[: -len("data.pkl")]
        if prefix + "byteorder" in names and archive.read(prefix + "byteorder").strip() == b"big":
            raise CheckpointError("big-endian checkpoints are not supported")
        tensors = _state_dict(_unpickle(io.BytesIO(archive.read(pickled))))
        storages = {}
        for tensor in tensors.values():
            key = tensor.storage.key
            if key not in storages:
                raw = archive.read(f"{prefix}data/{key}")
                storages[key] = np.frombuffer(raw, dtype=tensor.storage.dtype)
        return tensors, storages
    except (zipfile.BadZipFile, KeyError, EOFError, ValueError) as error:
        raise CheckpointError(f"unreadable zip checkpoint: {str(error)[:120]}") from None


def _materialize(tensor: _Tensor, storages: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The tensor's elements, strides honoured (a view of its storage may be in any order)."""
    storage = storages.get(tensor.storage.key)
    if storage is None:
        raise CheckpointError(f"tensor {name}: its storage {tensor.storage.key} is missing")
    if any(s < 0 for s in tensor.stride) or len(tensor.stride) != len(tensor.shape):
        raise CheckpointError(f"tensor {name}: bad strides {tensor.stride}")
    last = tensor.offset + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride)) if all(tensor.shape) else -1
    if tensor.offset < 0 or last >= storage.size:
        raise CheckpointError(f"tensor {name}: reaches past its storage ({storage.size} elements)")
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :], shape=tensor.shape, strides=tuple(s * item for s in tensor.stride), writeable=False
    )
    return np.ascontiguousarray(view)
