"""Good requests while hostile clients hammer `op-classifier serve`: latency idle, then under attack.

Usage: python benchmarks/serve_hostile.py [--clients 50] [--seconds 20]

An untrained default model registered in a temporary store, served on a free port. It times one good
b64 JPEG request at a time (a kept-alive connection) with nothing else going on, then again while
--clients threads (in a process of their own) attack at once, each in a loop: half a body sent then held open, a pair of
9400x9400 PNGs (small files, 265 MB each once decoded), a 5000-digit pixel, malformed JSON, a line of
noise instead of HTTP. Prints the median and 90th percentile of the good requests in both phases, their
ratio (the target: within 2x), what the hostile requests were answered, and the server's peak memory.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import io
import json
import multiprocessing
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

# benchmarks/serve.py's helpers: a script's own folder is the first place Python imports from.
from serve import REPO, free_port, photo_jpeg, register_untrained, start_server, stop


def good_request(port: int, body: bytes) -> Callable[[], float]:
    """One b64 request on a kept-alive connection; returns its seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post() -> float:
        start = time.perf_counter()
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
        return time.perf_counter() - start

    return post


def big_png_body() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (9400, 9400), (10, 120, 200)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"instances": [{"b64": image}, {"b64": image}]}).encode()


def attacks(port: int, big: bytes) -> dict[str, Callable[[], str]]:
    """Each a hostile request; returns what the server answered (a status, or how the connection ended)."""

    def raw(data: bytes, hold: float = 0.0) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(data)
            time.sleep(hold)
            answer = sock.recv(64)
        return answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"

    def post(body: bytes) -> str:
        head = f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        return raw(head.encode() + body)

    half = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    digits = b'{"instances": [[[' + b"9" * 5000 + b",0,0]]]}"
    return {
        "half a body, held": lambda: raw(half, hold=5.0),
        "two 9400x9400 PNGs": lambda: post(big),
        "a 5000-digit pixel": lambda: post(digits),
        "malformed JSON": lambda: post(b'{"instances": [[[1, 2,'),
        "noise, not HTTP": lambda: raw(b"\x16\x03\x01 not http at all\r\n\r\n"),
    }


def attack(port: int, clients: int, stop_flag: Any, results: Any) -> None:
    """`clients` threads, each repeating one kind of attack until stop_flag; puts what they were answered."""
    kinds, answers = list(attacks(port, big_png_body()).items()), collections.Counter()

    def attacker(index: int) -> None:
        name, hostile = kinds[index % len(kinds)]
        while not stop_flag.is_set():
            try:
                answers[f"{name}: {hostile()}"] += 1
            except OSError as error:
                answers[f"error {type(error).__name__}"] += 1

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put(dict(answers))


def latencies(call: Callable[[], float], seconds: float) -> list[float]:
    times, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        times.append(call())
    return times


def main() -> None:
    """Serve, time the good requests idle and under attack, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="op-serve-hostile-"))
    shutil.copytree(REPO / "conf", work / "conf")
    register_untrained(work)
    port = free_port()
    server = start_server(work, port, None, work / "serve.log")
    try:
        body = json.dumps({"instances": [{"b64": base64.b64encode(photo_jpeg((640, 480))).decode()}]}).encode()
        good = good_request(port, body)
        for _ in range(10):
            good()
        idle = latencies(good, args.seconds)
        stop_flag, results = multiprocessing.Event(), multiprocessing.Queue()
        # The attackers in a process of their own: as threads beside the timed client they shared its
        # GIL, and the good requests' times measured the benchmark's own contention.
        attackers = multiprocessing.Process(target=attack, args=(port, args.clients, stop_flag, results))
        attackers.start()
        process = psutil.Process(server.pid)
        peak = [process.memory_info().rss]
        time.sleep(4)  # every attacker under way
        attacked = []
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            attacked.append(good())
            peak.append(process.memory_info().rss)
        stop_flag.set()
        answers = results.get(timeout=120)
        attackers.join()
        print(f"{args.clients} hostile clients, {psutil.cpu_count()} CPU cores; good request: a 640x480 JPEG as b64")
        for name, times in (("idle", idle), ("under attack", attacked)):
            q = statistics.quantiles(times, n=10)
            print(
                f"  {name}: {len(times)} requests, median {1000 * statistics.median(times):.1f} ms, p90 {1000 * q[-1]:.1f} ms"
            )
        print(f"  median ratio {statistics.median(attacked) / statistics.median(idle):.2f}x (target: at most 2x)")
        print(f"  server peak memory {max(peak) / 2**30:.2f} GiB; hostile answers: {dict(answers)}")
    finally:
        stop(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
