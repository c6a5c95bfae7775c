"""The CPU counter: tiktoken, with user text always treated as ordinary text."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import tiktoken


class CpuCounter:
    """Counts with tiktoken's `encode_ordinary`: `<|endoftext|>` in a prompt is just text.

    Thread-safe; tiktoken releases the GIL while it encodes, so threads count in parallel.

    With `load`, the encodings named in `lazy` are loaded when first needed: each one costs
    20 to 40 MB a process, and most gateways count in one of them only. `TokenService`
    calls `load` off the event loop before it counts (`ready`, `load`).
    """

    name = "cpu"
    # Counts of short texts are kept: a chat re-sends its system prompt and its history with
    # every turn, so most of a request's texts were counted before. Bounded by the characters
    # held (emptied when full; under threads the bound is approximate).
    CACHED_TEXT_MAX_CHARS = 4096
    CACHE_MAX_CHARS = 1 << 20

    def __init__(self, encodings: dict[str, tiktoken.Encoding], *,
                 load: Callable[[str], tiktoken.Encoding] | None = None,
                 lazy: Sequence[str] = ()) -> None:
        self._encodings = dict(encodings)
        self._known: dict[tuple[str, str], int] = {}
        self._known_chars = 0
        self._load = load
        self._names = tuple(dict.fromkeys([*encodings, *(lazy if load is not None else ())]))
        self._lock = threading.Lock()

    @property
    def encodings(self) -> tuple[str, ...]:
        """Every encoding it counts in, loaded yet or not."""
        return self._names

    def ready(self, encoding: str) -> bool:
        return encoding in self._encodings

    def load(self, encoding: str) -> None:
        """Load `encoding` now if it is one to load on first use; blocking."""
        with self._lock:
            if encoding not in self._encodings and encoding in self._names:
                assert self._load is not None
                self._encodings[encoding] = self._load(encoding)

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        found = self._encodings.get(encoding)
        if found is None:  # not loaded yet: callers off the loop may load it here
            self.load(encoding)
            found = self._encodings[encoding]
        encode = found.encode_ordinary
        known = self._known
        counts = []
        for text in texts:
            if len(text) > self.CACHED_TEXT_MAX_CHARS:
                counts.append(len(encode(text)))
                continue
            key = (encoding, text)
            n = known.get(key)
            if n is None:
                n = known[key] = len(encode(text))
                self._known_chars += len(text)
                if self._known_chars > self.CACHE_MAX_CHARS:
                    known.clear()
                    self._known_chars = 0
            counts.append(n)
        return counts
