"""float32 against mixed_bfloat16 on this CPU: training speed and accuracy of the default model.

    python benchmarks/precision.py                     # the default sample, 12 epochs each
    python benchmarks/precision.py --epochs 20 --work /tmp/precision

Renders and prepares the default sample into WORK unless it is there, then trains the default model
(conf/'s default architecture, train.batch_size, the tuned-free defaults) once per policy, each in a fresh process
with the same seed and the same streamed batches, and prints per policy: the CPU's bfloat16 flags,
images/s over the epochs after the first (the first compiles), and the best and last val top-1
accuracy. train.mixed_precision=auto takes bfloat16 on a CPU only where this measured it faster at
equal accuracy (docs/decisions.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TRAIN = """
import json, sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
import keras
from op_classifier import config
from op_classifier.training.build import build
from op_classifier.data.stream import split_stream

root = Path({work!r})
paths = [f"paths.{{k}}={{root / v}}" for k, v in vars(config.load((), conf_dir=Path({conf!r})).paths).items()]
cfg = config.load((*paths, "tracking=none", "train.device=cpu", "train.mixed_precision={setting}"), conf_dir=Path({conf!r}))
classes = json.loads((root / "data/prepared/manifest.json").read_text())["classes"]
model, described = build(cfg, classes, {{}})

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.started)

times = []
data = split_stream(Path(cfg.paths.prepared), "train", cfg.train.batch_size, seed=cfg.seed)
val = split_stream(Path(cfg.paths.prepared), "val", cfg.train.batch_size)
history = model.fit(data, validation_data=val, epochs={epochs}, shuffle=False, callbacks=[Timer()], verbose=0)
n = len(data.rows)
later = times[1:] or times
accuracy = history.history["val_accuracy"]
print(json.dumps({{"policy": described["precision_policy"], "images_per_second": round(n * len(later) / sum(later), 1),
                  "first_epoch_s": round(times[0], 1), "best_val_accuracy": round(max(accuracy), 4),
                  "last_val_accuracy": round(accuracy[-1], 4)}}))
"""


def bf16_flags() -> list[str]:
    """The CPU's native bfloat16 flags (avx512_bf16, amx_bf16) in /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted({"avx512_bf16", "amx_bf16"} & set(flags))


def main() -> None:
    """Prepare the sample if needed, train once per policy, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--work", type=Path, default=REPO / "experiments" / "precision-benchmark")
    args = parser.parse_args()
    work = args.work.resolve()
    cli = str(Path(sys.executable).parent / "op-classifier")
    if not (work / "data/prepared/manifest.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([cli, "sample", "--out", str(work / "data/raw")], check=True, cwd=REPO)
        overrides = [f"paths.raw={work / 'data/raw'}", f"paths.prepared={work / 'data/prepared'}"]
        subprocess.run([cli, "prepare", *overrides], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    print(f"CPU bfloat16 flags: {', '.join(bf16_flags()) or 'none'}")
    for setting in ("off", "on"):  # on a CPU, `on` is mixed_bfloat16
        source = TRAIN.format(
            src=str(REPO / "src"), conf=str(REPO / "conf"), work=str(work), setting=setting, epochs=args.epochs
        )
        done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            sys.exit(f"training failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{result['policy']:>15}: {result['images_per_second']} images/s after the first epoch "
            f"({result['first_epoch_s']} s), val top-1 best {result['best_val_accuracy']} / last "
            f"{result['last_val_accuracy']} after {args.epochs} epochs"
        )


if __name__ == "__main__":
    main()
