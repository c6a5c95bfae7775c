"""Token counting throughput: tiktoken on one thread, and the batch API on all cores.

    .venv/bin/python bench/tokens.py [--mb 32] [--encoding o200k_base] [--rounds 5]

Counts a generated mixed corpus (English prose, code, CJK, Arabic, emoji, digits) split
into ~4 KB documents, through `TokenService.count` (what the gateway and its endpoint use),
and prints MB/s and tokens/s as medians over rounds. The batch run checks that its counts
equal the single-thread counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.settings import PROJECT_ROOT
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.encodings import load_all
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import TokenService

SAMPLES = [
    "The gateway meters every call, prices it exactly and records it in the ledger. ",
    "def count(texts: list[str]) -> list[int]:\n    return [len(enc.encode(t)) for t in texts]\n",
    "机器学习和自然语言处理正在改变软件的构建方式。",
    "يقوم النظام بحساب التكلفة الدقيقة لكل طلب.",
    "Invoice #2026-11-22: 1,234.56 USD for 98,765 tokens 🙂👍🏽 ",
    '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}\n',
]


def corpus(megabytes: float, doc_bytes: int = 4096, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    docs, total = [], 0
    while total < megabytes * 1_000_000:
        parts, size = [], 0
        while size < doc_bytes:
            s = rng.choice(SAMPLES)
            parts.append(s)
            size += len(s.encode())
        doc = "".join(parts)
        docs.append(doc)
        total += len(doc.encode())
    return docs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=32)
    parser.add_argument("--encoding", default="o200k_base")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    docs = corpus(args.mb)
    size_mb = sum(len(d.encode()) for d in docs) / 1e6
    cores = os.cpu_count() or 1
    counter = CpuCounter(load_all())
    models = ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml")
    single = TokenService(counter, models, inline_max_chars=sys.maxsize, threads=1)
    batch = TokenService(counter, models, inline_max_chars=0, threads=cores)

    print(f"{len(docs)} documents of ~4 KB, {size_mb:.1f} MB, {args.encoding}, "
          f"{args.rounds} rounds, {cores} cores")
    reference: list[int] = []
    for label, service in (("tiktoken, 1 thread (inline)", single),
                           (f"tiktoken batch, {cores} threads", batch)):
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            counts = await service.count(docs, args.encoding)
            times.append(time.perf_counter() - started)
        reference = reference or counts
        assert counts == reference, "batch counts differ from single-thread counts"
        t = statistics.median(times)
        print(f"  {label:32s} {size_mb / t:8.1f} MB/s  {sum(counts) / t / 1e6:8.2f} M tokens/s"
              f"  (median {t * 1000:.0f} ms)")
        service.close()


if __name__ == "__main__":
    asyncio.run(main())
