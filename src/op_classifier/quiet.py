"""TensorFlow's start-up noise off by default: `--verbose` or OP_CLASSIFIER_VERBOSE=1 shows it again.

Measured with TensorFlow 2.21 on a machine without a GPU driver, every command that loads
TensorFlow printed on stderr, before any output of ours:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR  (twice)
    I0000 ... cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.  (twice)
    I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU ...
    To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with ...
    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... (303)

TF_CPP_MIN_LOG_LEVEL=2 takes TensorFlow's C++ INFO and WARNING lines away (cpu_feature_guard,
oneDNN notes, GPU set-up chatter); its errors stay. No environment variable reaches the absl and
cudart_stub lines: each TensorFlow library logs them with its own copy of absl while it loads,
before absl's logging is set up (TF_CPP_MIN_LOG_LEVEL=3, GLOG_minloglevel, ABSL_MIN_LOG_LEVEL
measured: no effect). The cuInit "error" only says that there is no GPU driver. So while
TensorFlow is imported and lists its devices (which calls cuInit), this process's stderr passes
through a filter that drops those known start-up lines and forwards every other line at once.
Outside that window nothing is filtered: errors and warnings of ours, Keras's and TensorFlow's
own errors all stay.

Also off: MLflow's INFO lines (MLFLOW_LOGGING_LEVEL=WARNING; its warnings stay) and, when stderr
is no terminal, MLflow's artifact download bar (our bars, like prepare's, draw only on a terminal).

`configure()` runs when the package is imported (op_classifier/__init__.py): the DVC stages
(`python -m op_classifier.stages.train`) import TensorFlow at the top of their modules, before any
main() could run. It only sets defaults (a variable the user set wins; the ones it set are named
in OP_CLASSIFIER_QUIET_SET for child processes) and arms the filter for the first
`import tensorflow`; `op-classifier --verbose` undoes both before TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

VERBOSE_ENV = "OP_CLASSIFIER_VERBOSE"
# Defaults for the quiet mode; a value already in the environment is left alone.
QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow's C++ logs: errors only
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # MLflow's INFO lines ("Creating initial MLflow database tables...")
}
# Into a log, MLflow's download bar is a wall of lines; ours and prepare's draw only on a terminal.
NOT_A_TERMINAL_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
# Lines TensorFlow and its CUDA stubs print while loading and probing devices (with or without a GPU).
STARTUP_NOISE = re.compile(
    "|".join(
        (
            r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
            r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
            r"\] failed call to cuInit: ",
            r"cpu_feature_guard\.cc:\d+\] ",
            r"^To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags",
            r"\] oneDNN custom operations are on",
            r"\] Unable to register cu(DNN|FFT|BLAS) factory",
            r"\] computation placer already registered",
            r"TF-TRT Warning: Could not find TensorRT",
            # LiteRT: the converter's quantiser states its settings, the interpreter its default CPU delegate.
            r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: ",
            r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
        )
    )
)
# The names of QUIET_ENV that configure() set, for child processes: their --verbose takes them away too.
SET_MARK = "OP_CLASSIFIER_QUIET_SET"
_TRUE = {"1", "true", "yes", "on"}


def verbose_requested() -> bool:
    """OP_CLASSIFIER_VERBOSE is set to 1, true, yes or on."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in _TRUE


def configure(verbose: bool | None = None) -> None:
    """Quiet (the default) or verbose start-up; None: as OP_CLASSIFIER_VERBOSE says. Before TensorFlow loads."""
    if verbose is None:
        verbose = verbose_requested()
    ours = {name for name in os.environ.get(SET_MARK, "").split(",") if name}
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # child processes (a DVC stage started from here) show it too
        defaults = {**QUIET_ENV, **NOT_A_TERMINAL_ENV}
        for name in ours:
            if name in defaults and os.environ.get(name) == defaults[name]:
                del os.environ[name]
        os.environ.pop(SET_MARK, None)
        _disarm()
        return
    defaults = dict(QUIET_ENV) if _stderr_is_terminal() else {**QUIET_ENV, **NOT_A_TERMINAL_ENV}
    for name, value in defaults.items():
        if name not in os.environ:
            os.environ[name] = value
            ours.add(name)
    if ours:
        os.environ[SET_MARK] = ",".join(sorted(ours))
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def is_noise(line: str) -> bool:
    """A line TensorFlow prints while it starts up (see STARTUP_NOISE)."""
    return bool(STARTUP_NOISE.search(line))


def unless_verbose() -> contextlib.AbstractContextManager[None]:
    """filtered_stderr() around a noisy native call (LiteRT's converter and interpreter), unless verbose."""
    return contextlib.nullcontext() if verbose_requested() else filtered_stderr()


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """File descriptor 2 (what C++ writes too) through a filter that drops start-up noise lines."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr to filter (closed, a GUI interpreter)
        yield
        return
    read_end, write_end = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_end, original), name="op-classifier-stderr", daemon=True)
    pump.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump reads to its end and stops
        pump.join(timeout=5)  # a child started meanwhile may hold a copy; the pump then goes on with it


def _pump(read_end: int, out: int) -> None:
    """Forward every line that is not start-up noise; closes both descriptors when the pipe ends."""
    with open(read_end, "rb", buffering=0) as source, open(out, "wb", buffering=0) as sink:
        pending = b""
        while chunk := source.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_noise(line.decode("utf-8", "replace")))
            if kept:
                _write_all(sink, kept)
        if pending and not is_noise(pending.decode("utf-8", "replace")):
            _write_all(sink, pending)


def _write_all(sink: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[sink.write(view) or 0 :]


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Meets the first `import tensorflow` (direct, or from Keras, Keras Tuner or MLflow) once."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        _disarm()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with stderr filtered; the module keeps the real loader."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with filtered_stderr():
            self._loader.exec_module(module)
            _probe_devices(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _probe_devices(tensorflow: Any) -> None:
    # Listing the physical devices runs cuInit now, inside the filter (else on the first operation,
    # outside it). It sets up no device, so GPU memory growth and visibility can still be chosen later.
    with contextlib.suppress(Exception):  # a real problem shows again where the devices are used
        tensorflow.config.list_physical_devices()


def _disarm() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _QuietTensorFlow)]
