"""The CPU counter: tiktoken, with user text always treated as ordinary text."""

from __future__ import annotations

from collections.abc import Sequence

import tiktoken


class CpuCounter:
    """Counts with tiktoken's `encode_ordinary`: `<|endoftext|>` in a prompt is just text.

    Thread-safe; tiktoken releases the GIL while it encodes, so threads count in parallel.
    """

    name = "cpu"

    def __init__(self, encodings: dict[str, tiktoken.Encoding]) -> None:
        self._encodings = encodings

    @property
    def encodings(self) -> tuple[str, ...]:
        return tuple(self._encodings)

    def count(self, texts: Sequence[str], encoding: str) -> list[int]:
        encode = self._encodings[encoding].encode_ordinary
        return [len(encode(text)) for text in texts]
