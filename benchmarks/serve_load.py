"""`op-classifier serve` under load: Keras against LiteRT, batching off and on, 1 to 16 concurrent clients.

Usage: python benchmarks/serve_load.py PROJECT [--clients 1 4 16] [--seconds 10] [--window-ms 2]
       [--runtimes keras litert] [--quantize none|float16|int8] [--photo 640x480]
PROJECT is a folder where `make run` registered a champion and left data/prepared (the LiteRT file is
exported there on the first LiteRT start, with its check on the test split, as `serve` does).
Each client keeps one connection and sends one b64 JPEG (--photo, default 640x480) at a time, as
TensorFlow Serving's clients do, then the next. Printed per server and client count: requests/s,
median and p99 latency; per server, its peak memory (VmHWM) and what it runs on. The clients
run in this process's threads on the same cores as the server: a requests/s figure includes their cost.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from serve import free_port, photo_jpeg, start_server, stop  # benchmarks/serve.py, beside this file

CLI = str(Path(sys.executable).parent / "op-classifier")


def start(project: Path, port: int, runtime: str, window_ms: float, log: Path, quantize: str) -> subprocess.Popen:
    """`op-classifier serve` in project with the runtime and window; returns once /ping answers."""
    extra = ("--runtime", runtime, "--batch-window-ms", str(window_ms))
    extra += ("--quantize", quantize) if runtime == "litert" else ()
    return start_server(project, port, None, log, extra, seconds=600)  # the first LiteRT start exports


def load(port: int, body: bytes, clients: int, seconds: float) -> list[float]:
    """Latencies (s) of requests sent by `clients` threads, each one at a time, for `seconds` after 1 s warm-up."""
    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + 1.0
    end_at = start_at + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/json"}
        while True:
            began = time.perf_counter()
            if began >= end_at:
                break
            connection.request("POST", "/invocations", body, headers)
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status
            if began >= start_at:
                with lock:
                    latencies.append(time.perf_counter() - began)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def peak_memory_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    """Each server in turn, each client count against it, one line a cell."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window-ms", type=float, default=2.0, help="the batching window of the 'on' servers")
    parser.add_argument("--runtimes", nargs="+", default=["keras", "litert"])
    parser.add_argument("--photo", default="640x480", help="size of the generated JPEG, WxH")
    parser.add_argument("--quantize", default="none", help="the LiteRT file's (none, float16, int8)")
    args = parser.parse_args()
    width, height = (int(side) for side in args.photo.split("x"))
    body = json.dumps({"instances": [{"b64": base64.b64encode(photo_jpeg((width, height))).decode()}]}).encode()
    print(
        f"{os.cpu_count()} CPUs; one {args.photo} b64 JPEG a request ({len(body) / 1024:.0f} KiB); {args.seconds:g} s a cell"
    )
    print(f"{'runtime':8s} {'batching':>9s} {'clients':>7s} {'req/s':>8s} {'median ms':>10s} {'p99 ms':>8s}")
    for runtime in args.runtimes:
        for window in (0.0, args.window_ms):
            port, log = free_port(), args.project / f"serve-load-{runtime}-{window:g}.log"
            process = start(args.project, port, runtime, window, log, args.quantize)
            try:
                for clients in args.clients:
                    times = sorted(load(port, body, clients, args.seconds))
                    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
                    batching = f"{window:g} ms" if window else "off"
                    print(
                        f"{runtime:8s} {batching:>9s} {clients:7d} {len(times) / args.seconds:8.1f} "
                        f"{statistics.median(times) * 1e3:10.2f} {p99 * 1e3:8.2f}",
                        flush=True,
                    )
                memory = peak_memory_mib(process.pid)
            finally:
                stop(process)
            serving = next((line for line in log.read_text().splitlines() if line.startswith("serving ")), "")
            print(f"  peak memory {memory:.0f} MiB; {serving.split(':predict ', 1)[-1]}")


if __name__ == "__main__":
    main()
