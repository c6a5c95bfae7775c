"""Token counting throughput: tiktoken on one thread, tiktoken batched on every core, the GPU
counter (when a GPU is usable), and, for information, the GPU kernel's host (g++) build.

    .venv/bin/python bench/tokens.py [--sizes 1,64,1024,16384] [--encoding o200k_base]
                                     [--rounds 3] [--no-host]

Batches of 1, 64, 1,024 and 16,384 documents of ~4 KB of generated mixed text (prose, code,
JSON, many scripts, emoji, numbers, long runs: `gateway/tokens/sample_text.py`), each counted
by every backend; prints MB/s (median over rounds), the speed-up over one tiktoken thread,
and whether the counts equal tiktoken's. One tiktoken thread does 15 to 19 MB/s; the GPU
target is 20 times that on batches of 8 MB or more, with identical counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.settings import PROJECT_ROOT
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.encodings import load_all
from gateway.tokens.gpu import GpuCounter, unavailable_reason
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.native import HostCounter, HostLib, NativeUnavailable, build
from gateway.tokens.sample_text import mixed_documents
from gateway.tokens.service import TokenService

Count = Callable[[Sequence[str]], list[int]]


def measure(count: Count, docs: list[str], rounds: int) -> tuple[float, list[int]]:
    times, counts = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        counts = count(docs)
        times.append(time.perf_counter() - started)
    return statistics.median(times), counts


def backends(args: argparse.Namespace) -> list[tuple[str, Count]]:
    encodings = load_all()
    cores = os.cpu_count() or 1
    cpu = CpuCounter(encodings)
    models = ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml")
    batch = TokenService(cpu, models, inline_max_chars=0, threads=cores)
    enc = args.encoding
    out: list[tuple[str, Count]] = [
        ("tiktoken, 1 thread", lambda d: cpu.count(d, enc)),
        (f"tiktoken batch, {cores} threads",
         lambda d: asyncio.run(batch.count(d, enc))),
    ]
    reason = None if args.no_gpu else unavailable_reason(args.device)
    if reason is None and not args.no_gpu:
        gpu = GpuCounter(encodings, device_id=args.device)
        print(f"GPU: {gpu.device_name}, kernel compiled in {gpu.compile_seconds:.2f} s")
        out.append(("GPU counter", lambda d: gpu.count(d, enc)))
    else:
        print(f"GPU counter: not run ({reason or '--no-gpu'})")
    if not args.no_host:
        try:
            lib = HostLib(build(Path(tempfile.gettempdir()) / "gateway-tokens-native"))
            host = HostCounter(lib, encodings)
            host.table(enc)
            out.append(("kernel host build (g++), 1 thread", lambda d: host.count(d, enc)))
        except NativeUnavailable as exc:
            print(f"host build: not run ({exc})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,1024,16384",
                        help="documents per batch, comma-separated")
    parser.add_argument("--encoding", default="o200k_base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--no-host", action="store_true", help="skip the g++ build")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    docs = mixed_documents(max(sizes) * 4096 / 1e6 + 0.01)
    runners = backends(args)
    print(f"{args.encoding}, documents of ~4 KB, median of {args.rounds} rounds")
    print(f"{'docs':>6} {'MB':>7}  {'backend':36} {'MB/s':>8} {'x 1 thread':>10}  counts")
    for size in sizes:
        batch = docs[:size]
        mb = sum(len(d.encode()) for d in batch) / 1e6
        rounds = args.rounds if mb < 16 else 1
        baseline, reference = 0.0, None
        for label, count in runners:
            seconds, counts = measure(count, batch, rounds)
            speed = mb / seconds
            baseline = baseline or speed
            reference = reference if reference is not None else counts
            same = "identical" if counts == reference else "DIFFERENT"
            print(f"{size:6d} {mb:7.2f}  {label:36} {speed:8.1f} {speed / baseline:10.1f}  "
                  f"{same}")


if __name__ == "__main__":
    main()
