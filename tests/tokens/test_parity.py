"""The gateway's counts equal tiktoken's exactly, on the parity corpus, through every path."""

from __future__ import annotations

import pytest
import tiktoken

from gateway.tokens.encodings import ENCODINGS
from gateway.tokens.service import TokenService, upper_bound

from .corpus import FIXED, random_texts

RANDOM = random_texts()


def reference(enc: tiktoken.Encoding, texts: list[str]) -> list[int]:
    return [len(enc.encode_ordinary(t)) for t in texts]


@pytest.mark.parametrize("name", ENCODINGS)
async def test_fixed_corpus_inline_and_threaded(service: TokenService, name: str,
                                                encodings: dict[str, tiktoken.Encoding]) -> None:
    expected = reference(encodings[name], FIXED)
    assert await service.count(FIXED, name) == expected  # large total: thread pool
    inline = [(await service.count([t], name))[0] for t in FIXED if len(t) <= 2048]
    assert inline == [n for t, n in zip(FIXED, expected, strict=True) if len(t) <= 2048]


@pytest.mark.parametrize("name", ENCODINGS)
async def test_ten_thousand_random_strings(service: TokenService, name: str,
                                           encodings: dict[str, tiktoken.Encoding]) -> None:
    assert len(RANDOM) == 10_000
    assert await service.count(RANDOM, name) == reference(encodings[name], RANDOM)


def test_corpus_covers_what_it_claims() -> None:
    joined = "".join(FIXED)
    assert "<|endoftext|>" in joined and "\u200d" in joined and "\ud800" in joined
    assert any(0xD800 <= ord(c) <= 0xDFFF for t in RANDOM for c in t)  # lone surrogates
    assert any(ord(c) > 0xFFFF for t in RANDOM for c in t)


async def test_special_token_text_is_ordinary_text(service: TokenService,
                                                   encodings: dict[str, tiktoken.Encoding]) -> None:
    enc = encodings["o200k_base"]
    [n] = await service.count(["<|endoftext|>"], "o200k_base")
    assert n == len(enc.encode("<|endoftext|>", disallowed_special=())) > 1
    with pytest.raises(ValueError):  # what plain tiktoken.encode would have done
        enc.encode("<|endoftext|>")


@pytest.mark.parametrize("name", ENCODINGS)
async def test_upper_bound_is_a_ceiling(service: TokenService, name: str) -> None:
    counts = await service.count(FIXED + RANDOM[:2000], name)
    for text, n in zip(FIXED + RANDOM[:2000], counts, strict=True):
        assert n <= upper_bound([text])
