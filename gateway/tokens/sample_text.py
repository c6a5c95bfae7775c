# ruff: noqa: RUF001  (the samples are made of ambiguous characters on purpose)
"""Generated mixed text for parity tests and benchmarks of the token counters.

Documents of about `doc_bytes` UTF-8 bytes mixing what the gateway meets (prose, code,
JSON, chat logs, numbers, URLs, many scripts, emoji sequences) with what stresses a
pre-tokenizer (contractions in every case, long-s, marks, every kind of whitespace, runs
long enough to pass the GPU kernel's piece limit, lone characters from all of Unicode).
Deterministic for a seed.
"""

from __future__ import annotations

import random
import string

BASE64 = string.ascii_letters + string.digits + "+/"

SAMPLES = [
    "The gateway meters every call, prices it exactly and records it in the ledger. ",
    "We'll see; they're here, I'd go, you've been, it's fine. DON'T SHOUT, It'S OK. ",
    "Naïve café owners' résumés — “quoted” ‘text’ … and so on. ",
    "def count(texts: list[str]) -> list[int]:\n    return [len(enc.encode(t)) for t in texts]\n",
    "for (let i = 0; i < n; ++i) {\r\n\tsum += a[i] * b[i];\r\n}\r\n",
    '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}\n',
    "SELECT id, sum(cost_usd) FROM usage WHERE ts >= now() - interval '7 days' GROUP BY 1;\n",
    "https://example.com/a/b?c=1&d=%20e#f  /usr/local/bin//python3 ",
    "Invoice #2026-11-22: 1,234.56 USD for 98,765 tokens (3.5e-7 per token). ",
    "机器学习和自然语言处理正在改变软件的构建方式。",
    "日本語のテキスト、カタカナとひらがな。東京都",
    "한국어 텍스트입니다. 안녕하세요!",
    "يقوم النظام بحساب التكلفة الدقيقة لكل طلب.",
    "Привет, мир! Это проверка кириллицы. ",
    "हिन्दी पाठ का परीक्षण। ",
    "Ελληνικά: Γειά σου Κόσμε. ",
    "🙂👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 🇫🇷🇯🇵 ",
    "e\u0301 a\u0308 o\u0303 \u0301\u0302 ǅ ǈ ǋ ʰʲ ꟸ ſ 'ſ x'ſ Ⅻ ½ ² ",
    "\u00a0\u2003\u3000\u200b\u2028\u2029\u0085\u180e\ufeff",
    "\t\t\n\n\n  \r\n   \n",
]


def _long_run(rng: random.Random) -> str:
    kind = rng.randrange(5)
    size = rng.choice([20, 60, 127, 128, 129, 200, 400])
    if kind == 0:
        return " " * size + rng.choice(["x", "\n", ""])
    if kind == 1:
        return "\n" + "    " * (size // 4) + "return x\n"
    if kind == 2:
        return "".join(rng.choice(BASE64) for _ in range(size)) + "== "
    if kind == 3:
        return rng.choice("-=_*#~.") * size + "\n"
    return "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(size // 3))


def _random_chars(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 12)):
        cp = rng.randint(0, 0x10FFFF) if rng.random() < 0.3 else rng.randint(0, 0x3000)
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
    return "".join(out)


def mixed_documents(megabytes: float, *, doc_bytes: int = 4096, seed: int = 7) -> list[str]:
    """Documents totalling at least `megabytes` MB (10**6 bytes) of UTF-8."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < megabytes * 1_000_000:
        parts, size = [], 0
        while size < doc_bytes:
            roll = rng.random()
            if roll < 0.04:
                part = _long_run(rng)
            elif roll < 0.12:
                part = _random_chars(rng)
            else:
                part = rng.choice(SAMPLES)
            parts.append(part)
            size += len(part.encode())
        doc = "".join(parts)
        docs.append(doc)
        total += len(doc.encode())
    return docs
