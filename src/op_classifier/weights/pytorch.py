"""PyTorch checkpoints read into numpy without torch, and without running any code they carry.

Both of torch.save's formats: the legacy one (five pickles in a row, then each storage's raw bytes)
and the zip one (torch >= 1.6: `<archive>/data.pkl` plus `<archive>/data/<key>`). A pickle can call
any importable function, so the unpickler accepts only what a state dict needs, as torch's own
`weights_only` loader does, and refuses any other global with one line naming it.

Reading has a budget: every field the pickle gives a tensor or a storage is checked, and the sizes it
adds up to are capped, before anything is allocated; a malformed field is one CheckpointError line.
"""

from __future__ import annotations

import io
import math
import pickle
import reprlib
import struct
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from op_classifier.errors import OpClassifierError, first_line

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
# The largest checkpoint read here (EfficientNet-Lite2's) holds 24 MB of tensors: 2 GiB leaves room for far
# larger backbones, yet refuses a file that would take the machine's memory. It caps the storages read (as
# declared, and as inflated from a zip) and, apart, the arrays made of them (a view may repeat elements).
MAX_TENSOR_BYTES = 2 << 30
# Lite2's pickles take 62 kB; each byte of a pickle can make ~80 bytes of objects: 8 MiB stays under 1 GiB
MAX_PICKLE_BYTES = 8 << 20
MAX_FILE_BYTES = MAX_TENSOR_BYTES + (64 << 20)  # the storages, their pickles, a zip's headers and padding
MAX_RANK = 32  # numpy 1's limit; torch's weights stay far below it
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # torch stores its members; a re-zipped file deflates


class CheckpointError(OpClassifierError):
    """The checkpoint cannot be read, or would run code if it were."""

    exit_code = 2


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120
_REPR.maxtuple = _REPR.maxlist = 8


def _show(value: Any) -> str:
    """A field as an error quotes it: one line, short, whatever the pickle made it."""
    return _REPR.repr(value)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0  # not a bool, a float or a string that would pass for one


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class _Tensor:
    """A tensor as the pickle gave it; _checked makes its fields what they claim to be."""

    storage: Any
    offset: Any
    shape: Any
    stride: Any


def _rebuild_tensor(storage: Any, offset: Any, shape: Any, stride: Any, *_: Any) -> _Tensor:
    return _Tensor(storage, offset, shape, stride)


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

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(stream)
        self.storages: dict[str, _Storage] = {}  # every storage the pickle declares, by key

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise CheckpointError(
                f"refusing to load: the checkpoint's pickle asks for {module}.{name}, not a state-dict type"
            )
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid: Any) -> _Storage:
        storage = _storage(pid)
        if self.storages.setdefault(storage.key, storage) != storage:
            raise CheckpointError(f"storage {_show(storage.key)} is declared twice, differently")
        return storage


def _storage(pid: Any) -> _Storage:
    """A persistent id as torch writes it: ('storage', type, key, location, numel), and in the legacy format
    a view's metadata, None since torch 0.4."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
        raise CheckpointError(f"unreadable checkpoint: unknown persistent id {_show(pid)}")
    _, kind, key, location, numel, *view = pid
    if not isinstance(key, str):
        raise CheckpointError(f"storage key {_show(key)} is not a string")
    if not isinstance(location, str):
        raise CheckpointError(f"storage {_show(key)}: location {_show(location)} is not a string")
    if not _count(numel):
        raise CheckpointError(f"storage {_show(key)}: element count {_show(numel)} is not a non-negative integer")
    if view not in ([], [None]):
        raise CheckpointError(f"storage {_show(key)} is a view of another (torch < 0.4): not supported")
    return _Storage(key, kind.dtype, numel)


def _unpickle(stream: BinaryIO) -> tuple[Any, dict[str, _Storage]]:
    unpickler = _SafeUnpickler(stream)
    try:
        return unpickler.load(), unpickler.storages
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
    ) as error:
        raise CheckpointError(f"unreadable checkpoint: {type(error).__name__}: {first_line(error, 120)}") from None


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a PyTorch state-dict checkpoint as a C-contiguous numpy array, by name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        tensors, storages = _read(path)
        return {name: _materialize(tensor, storages[tensor.storage.key]) for name, tensor in tensors.items()}
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read it: {error.strerror or first_line(error)}") from None
    except MemoryError:  # within the caps, yet more than this machine has free
        raise CheckpointError(f"{path}: not enough memory for its tensors") from None


def _read(path: Path) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{size} bytes: a checkpoint may have at most {MAX_FILE_BYTES} (MAX_FILE_BYTES)")
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path.read_bytes())


def _state_dict(obj: Any) -> dict[str, _Tensor]:
    """The state dict's tensors, each checked, and their sizes within the caps: before any storage is read."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, _Tensor) for v in obj.values()):
        raise CheckpointError("not a state dict (a mapping of names to tensors)")
    tensors, total = {}, 0
    for name, tensor in obj.items():
        if not isinstance(name, str):
            raise CheckpointError(f"a state dict's names are strings, not {_show(name)}")
        tensors[name] = checked = _checked(tensor, f"tensor {_show(name)}")
        dtype = np.dtype(checked.storage.dtype)
        total += math.prod(checked.shape) * dtype.itemsize
        if total > MAX_TENSOR_BYTES:
            raise CheckpointError(
                f"tensor {_show(name)}: {_show(checked.shape)} of {dtype.name} would take the tensors to {total} "
                f"bytes, past the cap of {MAX_TENSOR_BYTES} (MAX_TENSOR_BYTES)"
            )
    declared = sum(storage.nbytes for storage in {t.storage.key: t.storage for t in tensors.values()}.values())
    if declared > MAX_TENSOR_BYTES:
        raise CheckpointError(
            f"the tensors' storages declare {declared} bytes, past the cap of {MAX_TENSOR_BYTES} (MAX_TENSOR_BYTES)"
        )
    return tensors


def _checked(tensor: _Tensor, what: str) -> _Tensor:
    """The tensor with its fields checked against its storage's header: a view that stays inside it."""
    storage = tensor.storage
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"{what}: its storage is {_show(storage)}, not a storage")
    shape, stride = _sizes(tensor.shape, f"{what}: shape"), _sizes(tensor.stride, f"{what}: stride")
    if not _count(tensor.offset):
        raise CheckpointError(f"{what}: offset {_show(tensor.offset)} is not a non-negative integer")
    if len(shape) != len(stride):
        raise CheckpointError(f"{what}: shape {_show(shape)} but stride {_show(stride)}: one stride per dimension")
    if len(shape) > MAX_RANK:
        raise CheckpointError(f"{what}: {len(shape)} dimensions, more than {MAX_RANK}")
    _check_extent(shape, stride, tensor.offset, storage.numel, what)
    return _Tensor(storage, tensor.offset, shape, stride)


def _check_extent(shape: tuple[int, ...], stride: tuple[int, ...], offset: int, numel: int, what: str) -> None:
    for size, step in zip(shape, stride):
        if step == 0 and size > 1:  # one element repeated (torch's expand()): never a saved weight
            raise CheckpointError(f"{what}: stride 0 along a dimension of size {size}")
    if not math.prod(shape) and math.prod(n for n in shape if n) > MAX_TENSOR_BYTES:  # numpy refuses it, even empty
        raise CheckpointError(f"{what}: empty, yet its shape {_show(shape)} is past what numpy can make")
    if math.prod(shape) and offset + sum((n - 1) * s for n, s in zip(shape, stride)) >= numel:
        raise CheckpointError(f"{what}: reaches past its storage ({numel} elements)")


def _sizes(value: Any, what: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(_count(v) for v in value)):
        raise CheckpointError(f"{what} {_show(value)} is not a tuple of non-negative integers")
    return tuple(value)


def _read_legacy(data: bytes) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    stream = io.BytesIO(data[:MAX_PICKLE_BYTES])  # the pickles come first; past the cap, they end there
    if _legacy_pickle(stream, data)[0] != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (no torch.save magic number)")
    if _legacy_pickle(stream, data)[0] != LEGACY_PROTOCOL:
        raise CheckpointError("unsupported PyTorch legacy protocol version")
    system = _legacy_pickle(stream, data)[0]
    if isinstance(system, dict) and system.get("little_endian") is False:
        raise CheckpointError("big-endian checkpoints are not supported")
    obj, declared = _legacy_pickle(stream, data)
    tensors = _state_dict(obj)
    keys = _storage_keys(_legacy_pickle(stream, data)[0], declared)
    storages = _legacy_storages(data, stream.tell(), [declared[key] for key in keys])
    for name, tensor in tensors.items():
        if tensor.storage.key not in storages:
            raise CheckpointError(f"tensor {_show(name)}: its storage {_show(tensor.storage.key)} is missing")
    return tensors, storages


def _legacy_pickle(stream: io.BytesIO, data: bytes) -> tuple[Any, dict[str, _Storage]]:
    try:
        return _unpickle(stream)
    except CheckpointError:
        if len(data) > MAX_PICKLE_BYTES and stream.tell() >= MAX_PICKLE_BYTES:
            raise CheckpointError(
                f"its pickles run past the cap of {MAX_PICKLE_BYTES} bytes (MAX_PICKLE_BYTES)"
            ) from None
        raise


def _storage_keys(keys: Any, declared: dict[str, _Storage]) -> list[str]:
    """The legacy file's storage list: keys the pickle declared, each once, in the order their bytes come."""
    if not isinstance(keys, list):
        raise CheckpointError(f"the storage list is {_show(keys)}, not a list of keys")
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, str) or key not in declared:
            raise CheckpointError(f"storage list: {_show(key)} is not a storage the pickle declares")
        if key in seen:
            raise CheckpointError(f"storage list: {_show(key)} appears twice")
        seen.add(key)
    return keys


def _legacy_storages(data: bytes, at: int, storages: list[_Storage]) -> dict[str, np.ndarray]:
    """Each storage as a view of the file's bytes, where its count (8 bytes) says what its header does."""
    arrays = {}
    for storage in storages:
        if at + 8 > len(data):
            raise CheckpointError("truncated: the storages end early")
        (count,) = struct.unpack_from("<q", data, at)
        if count != storage.numel:
            raise CheckpointError(
                f"storage {_show(storage.key)}: the file holds {count} elements where its header declares "
                f"{storage.numel}"
            )
        at += 8
        if at + storage.nbytes > len(data):
            raise CheckpointError("truncated: the storages end early")
        arrays[storage.key] = np.frombuffer(data, dtype=storage.dtype, count=storage.numel, offset=at)
        at += storage.nbytes
    return arrays


def _read_zip(path: Path) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as archive:
            return _zip_contents(archive)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, zlib.error) as error:
        raise CheckpointError(f"unreadable zip checkpoint: {first_line(error, 120)}") from None


def _zip_contents(archive: zipfile.ZipFile) -> tuple[dict[str, _Tensor], dict[str, np.ndarray]]:
    names = archive.namelist()
    pickled = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if pickled is None:
        raise CheckpointError("a zip file without <archive>/data.pkl: not a PyTorch checkpoint")
    prefix = pickled[: -len("data.pkl")]
    if prefix + "byteorder" in names and _member(archive, prefix + "byteorder", 16).strip() == b"big":
        raise CheckpointError("big-endian checkpoints are not supported")
    tensors = _state_dict(_unpickle(io.BytesIO(_member(archive, pickled, MAX_PICKLE_BYTES)))[0])
    storages = {}
    for storage in {t.storage.key: t.storage for t in tensors.values()}.values():
        name = f"{prefix}data/{storage.key}"
        size = _entry(archive, name).file_size
        if size != storage.nbytes:
            raise CheckpointError(
                f"storage {_show(storage.key)} is {size} bytes in the archive where its header declares "
                f"{storage.nbytes}"
            )
        raw = _member(archive, name, storage.nbytes)
        if len(raw) != storage.nbytes:
            raise CheckpointError(f"truncated: storage {_show(storage.key)} ends early")
        storages[storage.key] = np.frombuffer(raw, dtype=storage.dtype)
    return tensors, storages


def _entry(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"{name} is missing from the archive") from None
    if info.compress_type not in ZIP_METHODS:
        raise CheckpointError(
            f"{name} is compressed with method {info.compress_type}: torch's are stored (or deflated)"
        )
    if info.flag_bits & 0x1:
        raise CheckpointError(f"{name} is encrypted")
    return info


def _member(archive: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A member's bytes, at most `limit` of them, however far its deflate stream would inflate."""
    info = _entry(archive, name)
    if info.file_size > limit:
        raise CheckpointError(f"{name} is {info.file_size} bytes, past the cap of {limit} bytes")
    with archive.open(info) as member:
        # never read(): it inflates up to 2 GiB at a time before cutting at the header's size; read(n) stops
        # at n, and a stream longer than its header says then fails its CRC
        return member.read(info.file_size)


def _materialize(tensor: _Tensor, storage: np.ndarray) -> np.ndarray:
    """The checked tensor's elements, strides honoured (a view of its storage may be in any order)."""
    if not math.prod(tensor.shape):
        return np.zeros(tensor.shape, storage.dtype)
    # a dimension of size 1 is never stepped along: its stride, whatever it says, need not reach numpy
    strides = tuple(s * storage.itemsize if n > 1 else 0 for n, s in zip(tensor.shape, tensor.stride))
    view = np.lib.stride_tricks.as_strided(
        storage[tensor.offset :], shape=tensor.shape, strides=strides, writeable=False
    )
    return view.copy(order="C")  # owned and writeable; np.ascontiguousarray would make a scalar 1-d
