"""Token counting throughput: tiktoken on one thread, tiktoken batched on every core, the GPU
counter (when a GPU is usable), and, for information, the GPU kernel's host (g++) build.

    .venv/bin/python bench/tokens.py [--sizes 1,64,1024,16384] [--encoding o200k_base]
                                     [--rounds 3] [--no-host] [--profile] [--text-dir DIR]

Batches of 1, 64, 1,024 and 16,384 documents of ~4 KB of generated mixed text (prose, code,
JSON, many scripts, emoji, numbers, long runs: `gateway/tokens/sample_text.py`), each counted
by every backend; prints MB/s (median over rounds), the speed-up over one tiktoken thread,
and whether the counts equal tiktoken's. One tiktoken thread does 15 to 19 MB/s; the GPU
target is 20 times that on batches of 8 MB or more, with identical counts.

`--profile` says where the GPU counter's time goes, per batch size: packing (UTF-8 into
the pinned staging buffer, and the offsets), device (staging copies, transfers and both
kernels, waited for) and complete (adding the long pieces' tokens, and counting on the CPU
whatever the device left), from the counter's own stats. Without a GPU the device column is
n/a and pack and complete are measured on the host build's outputs (the same Python code on
the same kernel outputs), next to what they cost before issue 19: packing by a join then a
copy into the staging buffer, and every long piece counted on the CPU. `--text-dir DIR`
counts the text files under DIR (cycled to fill the batch) instead of the generated mixed
text: real text.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import functools
import itertools
import json
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
from gateway.tokens.packing import SCANNERS, PackedBatch, complete
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


def text_documents(directory: Path, count: int) -> list[str]:
    """The text files under `directory` (source, docs, config), cycled to `count` docs."""
    suffixes = {".py", ".md", ".toml", ".txt", ".cu", ".h", ".cpp", ".json", ".yaml", ".html"}
    texts = []
    for path in sorted(directory.rglob("*")):
        if path.suffix in suffixes and path.is_file() and ".venv" not in path.parts:
            try:
                texts.append(path.read_text())
            except (UnicodeDecodeError, OSError):
                continue
    if not texts:
        raise SystemExit(f"no text files under {directory}")
    return list(itertools.islice(itertools.cycle(texts), count))


def pack_then_stage(texts: Sequence[str], address: int) -> None:
    """Packing as the GPU counter did before issue 19: encode each document, join, and copy
    the result into the staging buffer."""
    batch = PackedBatch._pack_each(texts)
    ctypes.memmove(address, bytes(batch.data), len(batch.data))


def timed(rounds: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def profile(args: argparse.Namespace, docs: list[str], sizes: list[int]) -> None:
    """pack / device / complete per batch size (see the module's docstring)."""
    encodings = load_all()
    enc = args.encoding
    reason = "--no-gpu" if args.no_gpu else unavailable_reason(args.device)
    gpu = GpuCounter(encodings, device_id=args.device) if reason is None else None
    lib = HostLib(build(Path(tempfile.gettempdir()) / "gateway-tokens-native"))
    host = HostCounter(lib, encodings)
    table = host.table(enc)
    encoding = encodings[enc]
    where = gpu.device_name if gpu else f"n/a ({reason})"
    print(f"profile, {enc}, median of {args.rounds} rounds; device: {where}")
    print(f"{'docs':>6} {'MB':>7} {'pack s':>8} {'device s':>9} {'complete s':>10} "
          f"{'long':>6} {'on CPU':>6} {'total MB/s':>10} | before 19: {'pack s':>8} "
          f"{'complete s':>10}")
    for size in sizes:
        batch = docs[:size]
        packed = PackedBatch.pack(batch)
        mb = len(packed.data) / 1e6
        rounds = args.rounds
        staging = ctypes.create_string_buffer(len(packed.data) + 1)  # zeroed: paged in
        address = ctypes.addressof(staging)
        pack = timed(rounds, functools.partial(PackedBatch.pack_into, batch, address,
                                               len(staging)))
        pack_before = timed(rounds, functools.partial(pack_then_stage, batch, address))
        counts, longs, long_count, fallback = lib.count(SCANNERS[enc], table, packed,
                                                        host.chunk, 1 << 16)
        long_tokens = lib.long(table, packed, longs, long_count)
        done = complete(packed, counts, longs, long_count, fallback, encoding, long_tokens)
        outputs = (packed, counts, longs, long_count, fallback, encoding)
        finish = timed(rounds, functools.partial(complete, *outputs, long_tokens))
        finish_before = timed(rounds, functools.partial(complete, *outputs))
        device = "n/a"
        total = pack + finish
        if gpu is not None:
            stats = gpu.stats
            before = (stats.pack_seconds, stats.device_seconds, stats.complete_seconds)
            wall = timed(rounds, functools.partial(gpu.count, batch, enc))
            pack, seconds, finish = ((now - then) / rounds for now, then in zip(
                (stats.pack_seconds, stats.device_seconds, stats.complete_seconds), before,
                strict=True))
            device, total = f"{seconds:.4f}", wall
        on_cpu = done.long_pieces + done.fallback_docs
        speed = f"{mb / total:10.0f}" if gpu is not None else f"{'n/a':>10}"
        print(f"{size:6d} {mb:7.2f} {pack:8.4f} {device:>9} {finish:10.4f} "
              f"{done.device_long_pieces + done.long_pieces:6d} {on_cpu:6d} {speed} | "
              f"{'':11}{pack_before:8.4f} {finish_before:10.4f}")
    if gpu is not None:
        gpu.close()


def bulk(args: argparse.Namespace) -> None:
    """`gateway tokens count` on a generated JSONL log of `--bulk` MB, per backend: seconds
    (median over rounds, start-up included, as a user sees it) and the totals compared."""
    import io
    from dataclasses import replace

    from gateway.settings import load_settings
    from gateway.tokens.bulk import run

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        with log.open("wb") as f:
            for doc in mixed_documents(args.bulk):
                f.write(json.dumps({"model": "gpt-4o", "messages": [
                    {"role": "user", "content": doc}]}, ensure_ascii=False).encode() + b"\n")
        mb = log.stat().st_size / 1e6
        settings = load_settings()
        print(f"gateway tokens count on a {mb:.1f} MB log, median of {args.rounds} rounds")
        reference = None
        backends = ["cpu", "auto"] + ([] if unavailable_reason(args.device) else ["gpu"])
        for backend in backends:
            tokens = replace(settings.tokens, backend=backend, gpu_device=args.device,
                             cache_dir=Path(tmp) / "cache")
            configured = replace(settings, tokens=tokens)
            outputs: list[str] = []

            def once(configured: object = configured, outputs: list[str] = outputs) -> None:
                out = io.StringIO()
                run(configured, [str(log)], as_json=True, out=out)  # type: ignore[arg-type]
                outputs.append(out.getvalue())

            seconds = timed(args.rounds, once)
            reference = reference or outputs[-1]
            same = "identical" if outputs[-1] == reference else "DIFFERENT"
            print(f"  {backend:5} {seconds:8.2f} s {mb / seconds:8.1f} MB/s  {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,64,1024,16384",
                        help="documents per batch, comma-separated")
    parser.add_argument("--encoding", default="o200k_base")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--no-gpu", action="store_true")
    parser.add_argument("--no-host", action="store_true", help="skip the g++ build")
    parser.add_argument("--profile", action="store_true",
                        help="pack / device / complete seconds per batch size")
    parser.add_argument("--text-dir", type=Path,
                        help="count the text files under this directory instead")
    parser.add_argument("--bulk", type=float, metavar="MB",
                        help="time `gateway tokens count` on a JSONL log of this size")
    args = parser.parse_args()
    if args.bulk:
        bulk(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.text_dir is not None:
        docs = text_documents(args.text_dir, max(sizes))
    else:
        docs = mixed_documents(max(sizes) * 4096 / 1e6 + 0.01)
    if args.profile:
        profile(args, docs, sizes)
        return
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
