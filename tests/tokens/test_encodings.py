"""Encodings load offline, through tiktoken's own loader, checked by tiktoken's own hashes."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tiktoken_ext.openai_public as openai_public

from gateway.settings import PROJECT_ROOT
from gateway.tokens import encodings
from gateway.tokens.encodings import BPE_FILES, ENCODINGS, EncodingError, bundled_bpe

OFFLINE = textwrap.dedent("""
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network disabled for this test")
    socket.socket.connect = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    import requests  # tiktoken's downloader would fail on the first call

    from gateway.tokens.encodings import load_all
    encodings = load_all()
    print(len(encodings["o200k_base"].encode_ordinary("hello world, offline")),
          len(encodings["cl100k_base"].encode_ordinary("hello world, offline")))
""")


def _run_offline(cache_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", OFFLINE], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_hashes_are_tiktokens_own() -> None:
    source = inspect.getsource(openai_public)
    for bpe in BPE_FILES.values():
        assert bpe.url in source and bpe.sha256 in source


@pytest.mark.parametrize("name", ENCODINGS)
def test_bundled_files_match_tiktokens_hash(name: str) -> None:
    assert hashlib.sha256(bundled_bpe(name)).hexdigest() == BPE_FILES[name].sha256


def test_loads_and_counts_with_networking_disabled(tmp_path: Path) -> None:
    result = _run_offline(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == ["4", "4"]
    seeded = sorted(p.name for p in tmp_path.iterdir())
    assert seeded == sorted(hashlib.sha1(b.url.encode()).hexdigest()
                            for b in BPE_FILES.values())


def test_a_corrupt_cached_file_is_replaced(tmp_path: Path) -> None:
    bpe = BPE_FILES["o200k_base"]
    (tmp_path / hashlib.sha1(bpe.url.encode()).hexdigest()).write_bytes(b"garbage")
    result = _run_offline(tmp_path)
    assert result.returncode == 0, result.stderr
    cached = (tmp_path / hashlib.sha1(bpe.url.encode()).hexdigest()).read_bytes()
    assert hashlib.sha256(cached).hexdigest() == bpe.sha256


def test_an_existing_good_cache_is_used_as_is(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    encodings.load_encoding("cl100k_base")
    path = tmp_path / hashlib.sha1(BPE_FILES["cl100k_base"].url.encode()).hexdigest()
    before = path.stat().st_mtime_ns
    encodings.load_encoding("cl100k_base")
    assert path.stat().st_mtime_ns == before


def test_unknown_encoding() -> None:
    with pytest.raises(EncodingError, match="unknown encoding"):
        encodings.load_encoding("p50k_base")
