"""Memory of a data set larger than the model needs: peak RSS of prepare and of one training epoch.

    python benchmarks/memory.py                        # 40,000 images (10,000 a class) + 200 scenes
    python benchmarks/memory.py --per-class 1000 --work /tmp/mem   # a smaller scale, same steps

Renders the sample (`op-classifier sample --per-class N`) into WORK/data/raw unless it is there, then
runs each step in its own process and prints that process's peak RSS (its own, and the largest of the
worker processes it waited for):

- prepare: decode, deduplicate, split, write data/prepared (the arrays' size is printed);
- read pass: every training image once, in batches, through np.memmap and through arrays.RowFile
  (what the streams use), to show what a memory map costs in RSS;
- train: one epoch of the train stage's own build() and fit() (the default model, train.batch_size,
  the stream as every stage feeds it, validation included), tracking off; images/s = training
  images / seconds of that epoch.

The target of issue 8: peak RSS at most 2 GB while the prepared arrays hold ~3.9 GB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Each step runs in a child (python -c) and prints one JSON line last: its result and peak RSS.
PRELUDE = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
from pathlib import Path
from op_classifier import config

def rss_mb():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return round(own), round(workers)

def cfg(work, *overrides):
    root = Path(work)
    paths = [f"paths.{{k}}={{root / v}}" for k, v in vars(config.load((), conf_dir=Path({conf!r})).paths).items()]
    return config.load((*paths, "tracking=none", *overrides), conf_dir=Path({conf!r}))
"""

PREPARE = """
from op_classifier.stages import prepare
c = cfg({work!r})
started = time.perf_counter()
summary = prepare.run(c)
seconds = time.perf_counter() - started
own, workers = rss_mb()
size = sum(f.stat().st_size for f in Path(c.paths.prepared).rglob("images.npy"))
print(json.dumps({{"images": summary["train"] + summary["val"] + summary["test"], "seconds": round(seconds, 1),
                  "arrays_gb": round(size / 1e9, 2), "peak_rss_mb": own, "peak_rss_workers_mb": workers}}))
"""

READ_PASS = """
import numpy as np
from op_classifier.data.arrays import RowFile
path = Path({work!r}) / "data/prepared/train/images.npy"
started = time.perf_counter()
total = 0
if {how!r} == "memmap":
    images = np.load(path, mmap_mode="r")
    for start in range(0, len(images), 32):
        total += int(np.array(images[start:start + 32])[:, -1, -1, -1].sum())  # a copy: every byte read
else:
    rows = RowFile(path)
    for start in range(0, len(rows), 32):
        total += int(rows.read(range(start, min(start + 32, len(rows))))[:, -1, -1, -1].sum())
seconds = time.perf_counter() - started
own, _ = rss_mb()
print(json.dumps({{"seconds": round(seconds, 1), "peak_rss_mb": own}}))
"""

TRAIN = """
from op_classifier.training import phases
from op_classifier.training.build import build
from op_classifier.data.prepared import load_labels
from op_classifier.tracking import make_tracker
c = cfg({work!r}, "train.epochs=1", "train.warmup_epochs=0")
classes = json.loads((Path(c.paths.prepared) / "manifest.json").read_text())["classes"]
model, described = build(c, classes, {{}})
plan = phases.plan(c, model, described["learning_rate_used"])
tracker = make_tracker(c.tracking)
started = time.perf_counter()
with tracker.run("memory benchmark"):
    phases.fit(c, model, plan, tracker.epoch_callback(), classes)
seconds = time.perf_counter() - started
n = len(load_labels(Path(c.paths.prepared), "train"))
own, workers = rss_mb()
print(json.dumps({{"train_images": n, "seconds": round(seconds, 1), "images_per_second": round(n / seconds, 1),
                  "precision_policy": described["precision_policy"], "peak_rss_mb": own}}))
"""


def step(code: str, **values: object) -> dict:
    """Run one step in a fresh Python; its last stdout line is its JSON result."""
    source = PRELUDE.format(src=str(REPO / "src"), conf=str(REPO / "conf")) + code.format(**values)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, cwd=values["work"])
    if done.returncode != 0:
        sys.exit(f"step failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    """Sample, prepare, a read pass each way, one training epoch; print each step's peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10_000)
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--work", type=Path, default=REPO / "experiments" / "memory-benchmark")
    args = parser.parse_args()
    work = args.work.resolve()
    raw = work / "data" / "raw"
    if not raw.is_dir():
        started = time.perf_counter()
        cli = Path(sys.executable).parent / "op-classifier"
        command = [str(cli), "sample", "--out", str(raw), "--per-class", str(args.per_class)]
        subprocess.run([*command, "--scenes", str(args.scenes)], check=True, cwd=REPO)
        print(f"sample: {args.per_class} a class + {args.scenes} scenes in {time.perf_counter() - started:.0f} s")
    prepared = step(PREPARE, work=str(work))
    print(
        f"prepare: {prepared['images']} images, arrays {prepared['arrays_gb']} GB, {prepared['seconds']} s; "
        f"peak RSS {prepared['peak_rss_mb']} MB (largest decode worker {prepared['peak_rss_workers_mb']} MB)"
    )
    for how in ("memmap", "rowfile"):
        read = step(READ_PASS, work=str(work), how=how)
        print(f"read pass over train images via {how}: {read['seconds']} s, peak RSS {read['peak_rss_mb']} MB")
    trained = step(TRAIN, work=str(work))
    print(
        f"train: 1 epoch over {trained['train_images']} images ({trained['precision_policy']}) in "
        f"{trained['seconds']} s = {trained['images_per_second']} images/s; peak RSS {trained['peak_rss_mb']} MB"
    )


if __name__ == "__main__":
    main()
