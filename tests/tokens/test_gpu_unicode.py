"""The kernel's Unicode table against tiktoken's regex engine, on every code point.

Each check encodes one long text, `G X1 G X2 G ... G`, with tiktoken and with the host build
of the kernel, both under the same small probe vocabulary and the real pattern. The vocabulary
holds every substring of the ASCII context G, every suffix of G followed by any UTF-8 lead
byte, and any continuation byte followed by any prefix of G; so each match that contains a
character X becomes exactly [context-before + X's first byte] [X's middle bytes]
[X's last byte + context-after], and every other match one token. Equal token ids therefore
mean equal splits, for every code point. G holds "~0", a boundary whatever its neighbours
are, so no match spans two code points. `test_templates_tell_every_class_apart` shows the
contexts are enough: giving any code point another class changes what they produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tiktoken

from gateway.tokens.native import HostLib, build, compiler
from gateway.tokens.packing import SCANNERS, VocabTable

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler (g++) to build "
                                "the kernel's host twin")

SEPARATOR = "~0~"
# (before, after) each code point; found by searching for contexts that separate the classes
TEMPLATES = {
    "o200k_base": [("", "Aa"), ("!", "A"), ("a'", "a")],
    "cl100k_base": [("", "a"), ("'", "a")],
}
# the class bits each pattern reads (gen_unicode.py): cl100k has no case and no marks
SEEN = {"o200k_base": 0b11111, "cl100k_base": 0b11001}
NON_ASCII = [cp for cp in range(0x80, 0x110000) if not 0xD800 <= cp <= 0xDFFF]


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> HostLib:
    return HostLib(build(tmp_path_factory.getbasetemp() / "native", test_hooks=True))


def context(before: str, after: str) -> str:
    return after + SEPARATOR + before


def probe_ranks(g: bytes) -> dict[bytes, int]:
    ranks = {bytes([i]): i for i in range(256)}

    def add(key: bytes) -> None:
        if len(key) >= 2 and key not in ranks:
            ranks[key] = len(ranks)

    for i in range(len(g)):
        for j in range(i + 2, len(g) + 1):
            add(g[i:j])
        for lead in range(0xC2, 0xF5):
            add(g[i:] + bytes([lead]))
    for j in range(1, len(g) + 1):
        for continuation in range(0x80, 0xC0):
            add(bytes([continuation]) + g[:j])
    return ranks


def probe_encoding(name: str, ranks: dict[bytes, int],
                   encodings: dict[str, tiktoken.Encoding]) -> tiktoken.Encoding:
    return tiktoken.Encoding(f"probe-{name}", pat_str=encodings[name]._pat_str,
                             mergeable_ranks=ranks, special_tokens={})


def first_difference(enc: tiktoken.Encoding, expected: list[int], got: list[int],
                     text: str) -> str:
    i = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
             min(len(expected), len(got)))
    offset = len(enc.decode_bytes(expected[:i]))
    near = text.encode()[max(offset - 12, 0):offset + 12].decode(errors="replace")
    return f"first difference at byte {offset}: {near!r}"


CASES = [(name, before, after) for name, ts in TEMPLATES.items() for before, after in ts]


@pytest.mark.parametrize(("name", "before", "after"), CASES)
def test_every_code_point_splits_as_tiktoken_does(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding], name: str, before: str,
        after: str) -> None:
    g = context(before, after)
    ranks = probe_ranks(g.encode())
    text = g + g.join(map(chr, NON_ASCII)) + g
    expected = probe_encoding(name, ranks, encodings).encode_ordinary(text)
    got = lib.encode(SCANNERS[name], VocabTable.build(ranks), text.encode())
    assert len(NON_ASCII) == 0x110000 - 0x80 - 0x800
    assert got == expected, first_difference(probe_encoding(name, ranks, encodings),
                                             expected, got, text)


@pytest.mark.parametrize(("name", "before", "after"), CASES)
def test_every_ascii_character_splits_as_tiktoken_does(
        lib: HostLib, encodings: dict[str, tiktoken.Encoding], name: str, before: str,
        after: str) -> None:
    # ASCII has no lead byte to mark: register every substring, so each match is one token
    g = context(before, after)
    texts = [g + chr(cp) + g for cp in range(128)]
    ranks = {bytes([i]): i for i in range(256)}
    for data in (t.encode() for t in texts):
        for i in range(len(data)):
            for j in range(i + 2, len(data) + 1):
                ranks.setdefault(data[i:j], len(ranks))
    enc, table = probe_encoding(name, ranks, encodings), VocabTable.build(ranks)
    for text in texts:
        assert lib.encode(SCANNERS[name], table, text.encode()) == enc.encode_ordinary(text), \
            repr(text)


def _representatives(lib: HostLib) -> dict[int, list[int]]:
    """For each class in the table, its first code point of each UTF-8 length."""
    found: dict[tuple[int, int], int] = {}
    for cp in NON_ASCII:
        found.setdefault((lib.char_class(cp), len(chr(cp).encode())), cp)
    out: dict[int, list[int]] = {}
    for (cls, _), cp in sorted(found.items()):
        out.setdefault(cls, []).append(cp)
    return out


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_templates_tell_every_class_apart(lib: HostLib, name: str) -> None:
    assert lib.test_hooks
    representatives = _representatives(lib)
    assert len(representatives) == 7  # other, space, Lu/Lt, Ll, Lm/Lo, mark, number
    probes = []
    for before, after in TEMPLATES[name]:
        g = context(before, after)
        ranks = probe_ranks(g.encode())
        probes.append((g, VocabTable.build(ranks)))

    def observe(cp: int) -> list[list[int]]:
        return [lib.encode(SCANNERS[name], table, (g + chr(cp) + g).encode())
                for g, table in probes]

    seen = SEEN[name]
    for cls, cps in representatives.items():
        for cp in cps:
            truth = observe(cp)
            for other in representatives:
                if (other & seen) == (cls & seen):
                    continue
                lib.override(cp, other)
                try:
                    assert observe(cp) != truth, (hex(cp), cls, other)
                finally:
                    lib.override(None)


def test_table_is_tiktokens_unicode_version(lib: HostLib) -> None:
    letter, space = 1, 16
    assert lib.char_class(0x1C89) & letter  # CYRILLIC CAPITAL LETTER TJE, new in 16.0
    assert lib.char_class(0x1E5D0) & letter  # OL ONAL LETTER O, new in 16.0
    assert not lib.char_class(0x323B0) & letter  # CJK Extension J, new in 17.0
    assert not lib.char_class(0x1C) & space  # \s is White_Space, not str.isspace()
    assert lib.char_class(0x85) & space


def test_generated_table_is_current() -> None:
    unicodedata2 = pytest.importorskip("unicodedata2")
    kernels = Path(__file__).parents[2] / "gateway" / "tokens" / "kernels"
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_unicode", kernels / "gen_unicode.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    if unicodedata2.unidata_version != gen.UNICODE_VERSION:
        pytest.skip(f"unicodedata2 has Unicode {unicodedata2.unidata_version}")
    rendered = gen.render(gen.classes(unicodedata2.category))
    assert rendered == (kernels / "unicode_table.h").read_text()
