"""Encodings beyond the preloaded ones load on first use, off the loop, once; and the
gateway keeps no Python copy of the BPE ranks it does not need."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest
import tiktoken

from gateway.settings import PROJECT_ROOT
from gateway.tokens.cpu import CpuCounter
from gateway.tokens.encodings import PRELOADED, EncodingError, load_encoding, ranks
from gateway.tokens.models import ModelTokenizers
from gateway.tokens.service import TokenService

MODELS = ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml")


class SlowLoader:
    """load_encoding behind a gate, counting its calls and the threads it ran on."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.fail_first = fail_first
        self.gate = threading.Event()

    def __call__(self, name: str) -> tiktoken.Encoding:
        self.calls += 1
        self.threads.add(threading.get_ident())
        assert self.gate.wait(10)
        if self.fail_first and self.calls == 1:
            raise EncodingError("the cache directory is not writable")
        return load_encoding(name)


def service(loader: SlowLoader, encodings: dict[str, tiktoken.Encoding]) -> TokenService:
    counter = CpuCounter({"o200k_base": encodings["o200k_base"]}, load=loader,
                         lazy=("o200k_base", "cl100k_base"))
    return TokenService(counter, MODELS, inline_max_chars=2048, threads=2)


async def test_an_encoding_loads_once_off_the_loop_for_all_waiting_callers(
        encodings: dict[str, tiktoken.Encoding]) -> None:
    loader = SlowLoader()
    svc = service(loader, encodings)
    try:
        assert svc.counter.encodings == ("o200k_base", "cl100k_base")
        assert svc.counter.ready("o200k_base") and not svc.counter.ready("cl100k_base")
        waiting = [asyncio.create_task(svc.count(["hello world"], "cl100k_base"))
                   for _ in range(5)]
        await asyncio.sleep(0.05)
        # The loop is free while it loads: a preloaded encoding still counts meanwhile.
        assert await svc.count(["hello world"], "o200k_base") == [2]
        assert not any(t.done() for t in waiting)
        loader.gate.set()
        assert await asyncio.gather(*waiting) == [[2]] * 5
        assert loader.calls == 1
        assert threading.get_ident() not in loader.threads
        want = encodings["cl100k_base"].encode_ordinary("a longer text, counted again")
        assert await svc.count(["a longer text, counted again"], "cl100k_base") == [len(want)]
        assert loader.calls == 1
    finally:
        svc.close()


async def test_a_failed_load_fails_its_callers_and_the_next_call_tries_again(
        encodings: dict[str, tiktoken.Encoding]) -> None:
    loader = SlowLoader(fail_first=True)
    loader.gate.set()
    svc = service(loader, encodings)
    try:
        with pytest.raises(EncodingError, match="not writable"):
            await svc.count(["hello"], "cl100k_base")
        assert await svc.count(["hello world"], "cl100k_base") == [2]
        assert loader.calls == 2
    finally:
        svc.close()


async def test_a_caller_cut_short_does_not_cancel_the_load(
        encodings: dict[str, tiktoken.Encoding]) -> None:
    loader = SlowLoader()
    svc = service(loader, encodings)
    try:
        first = asyncio.create_task(svc.count(["hello world"], "cl100k_base"))
        await asyncio.sleep(0.05)
        first.cancel()
        second = asyncio.create_task(svc.count(["hello world"], "cl100k_base"))
        await asyncio.sleep(0.05)
        loader.gate.set()
        assert await second == [2]
        assert loader.calls == 1
    finally:
        svc.close()


def test_an_unknown_encoding_is_still_refused(encodings: dict[str, tiktoken.Encoding]) -> None:
    svc = service(SlowLoader(), encodings)
    try:
        with pytest.raises(KeyError):
            asyncio.run(svc.count(["x"], "p50k_base"))
    finally:
        svc.close()


def test_loaded_encodings_keep_no_python_copy_of_their_ranks() -> None:
    enc = load_encoding("o200k_base")
    assert "_mergeable_ranks" not in enc.__dict__
    bpe = ranks(enc)  # read back from the file when something needs them (the GPU tables)
    assert len(bpe) == 199_998 and bpe[b"hello"] == enc.encode_single_token(b"hello")


def test_the_gateway_starts_with_only_the_preloaded_encodings_in_memory() -> None:
    """A started gateway app holds o200k_base only, without numpy, Redis clients or
    cryptography; its first cl100k_base count loads that one."""
    code = """
import asyncio, sys
from gateway.settings import TokensSettings
from gateway.tokens.encodings import PRELOADED, load_all, load_encoding, ENCODINGS
from gateway.tokens.service import build_token_service
from gateway.tokens.models import ModelTokenizers
from gateway.settings import PROJECT_ROOT
import gateway.app
heavy = [m for m in ("numpy", "redis", "upstash_redis", "cryptography") if m in sys.modules]
svc = build_token_service(TokensSettings(backend="cpu"),
    ModelTokenizers.load(PROJECT_ROOT / "config" / "tokens.toml"), load_all(PRELOADED),
    load=load_encoding, lazy=ENCODINGS)
before = [n for n in ENCODINGS if svc.counter.ready(n)]
n = asyncio.run(svc.count(["hello world"], "cl100k_base"))
print(heavy, before, n, [n for n in ENCODINGS if svc.counter.ready(n)])
svc.close()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert PRELOADED == ("o200k_base",)
    assert out.stdout.split("\n")[-2] == (
        "[] ['o200k_base'] [2] ['o200k_base', 'cl100k_base']")


def test_counts_of_short_texts_are_kept_and_the_cache_stays_bounded(
        encodings: dict[str, tiktoken.Encoding]) -> None:
    class Counting:
        """o200k_base, counting the calls that reach tiktoken."""

        def __init__(self) -> None:
            self.calls = 0
            self.real = encodings["o200k_base"]

        def encode_ordinary(self, text: str) -> list[int]:
            self.calls += 1
            return self.real.encode_ordinary(text)

    enc = Counting()
    counter = CpuCounter({"o200k_base": enc})  # type: ignore[dict-item]
    system = "You are a careful assistant. " * 20
    long = "word " * 1000  # over CACHED_TEXT_MAX_CHARS: always counted
    first = counter.count([system, "hello", long], "o200k_base")
    assert first == [len(enc.real.encode_ordinary(t)) for t in (system, "hello", long)]
    assert enc.calls == 3
    assert counter.count([system, "hello", long], "o200k_base") == first
    assert enc.calls == 4  # only the long text again
    # Filling it past its bound empties it; counts stay exact either way.
    texts = [f"text number {i} " * 200 for i in range(CpuCounter.CACHE_MAX_CHARS // 3000 + 2)]
    assert counter.count(texts, "o200k_base") == [len(enc.real.encode_ordinary(t))
                                                   for t in texts]
    assert counter._known_chars <= CpuCounter.CACHE_MAX_CHARS
    assert len(counter._known) < len(texts)
