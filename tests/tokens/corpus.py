# ruff: noqa: RUF001  (the corpus is made of ambiguous characters on purpose)
"""The parity corpus: texts on which the gateway's counts must equal tiktoken's exactly.

Shared with the GPU counter's tests. Deterministic: the random part has a fixed seed.
"""

from __future__ import annotations

import random

FIXED = [
    "",
    "hello world",
    "Hello, World! How's it going? I'm fine; they're here, we've been, you'll see, he'd go.",
    "The quick brown fox jumps over the lazy dog. " * 40,
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\r\n",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "SELECT id, name FROM projects WHERE enabled = true ORDER BY id DESC LIMIT 10;",
    "https://example.com/path?query=1&x=%20y#frag",
    "你好，世界！这是一个测试。机器学习和自然语言处理。",
    "日本語のテキスト、カタカナとひらがな。東京都",
    "한국어 텍스트입니다. 안녕하세요!",
    "مرحبا بالعالم، هذا اختبار للنص العربي.",
    "שלום עולם, זה מבחן",
    "Привет, мир! Это проверка кириллицы.",
    "Ελληνικά: Γειά σου Κόσμε",
    "हिन्दी पाठ का परीक्षण",
    "🙂🙃😀 emoji 🎉🎉 and flags 🇫🇷🇯🇵",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 coder, 🏳️‍🌈 flag, ❤️‍🔥",
    "e\u0301 combining accents a\u0308 o\u0303",
    "\u200b zero width \u200d joiner \ufeff bom",
    " " * 1000,
    "\t\t\t\n\n\n   \r\n  x  ",
    "a" + " " * 37 + "b",
    "0123456789" * 50,
    "3.14159265358979323846264338327950288419716939937510",
    "1,000,000 and 2.5e-10 and -42 and 0x1F",
    "<|endoftext|>",
    "before <|endoftext|> after <|fim_prefix|><|fim_middle|><|fim_suffix|> <|endofprompt|>",
    "<|im_start|>system<|im_end|>",
    "lone surrogate \ud800 here",
    "\udfff at start",
    "pair \ud83d\ude00 written as surrogates",
    "ﬁ ligature, Å angstrom, Ω ohm, ℌ fraktur",
    "CAPITALS AND lowercase AND MiXeD CaSe WORDS",
    "don't DON'T Don'T it's IT'S",
    "tab\tseparated\tvalues\n1\t2\t3",
    "x" * 5000,
    "🙂" * 500,
    "\x00\x01\x02 control \x7f chars",
]


def random_texts(count: int = 10_000, seed: int = 20261122) -> list[str]:
    """Random strings over all of Unicode (surrogates included), weighted to stress the
    pre-tokenizer: letters, digits, marks, spaces, punctuation and astral symbols."""
    rng = random.Random(seed)
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF),
              (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xD800, 0xDFFF), (0xE000, 0xF8FF),
              (0xFE00, 0xFE0F), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF), (0x2000, 0x206F)]
    whitespace = [" ", "  ", "\n", "\r\n", "\t", "\u3000", "\u00a0"]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 40)):
            roll = rng.random()
            if roll < 0.15:
                parts.append(rng.choice(whitespace))
            elif roll < 0.25:
                parts.append(str(rng.randint(0, 10**rng.randint(1, 8))))
            else:
                low, high = rng.choice(ranges)
                parts.append(chr(rng.randint(low, high)))
        texts.append("".join(parts))
    return texts
