"""Text PostgreSQL can store: `text` and `jsonb` refuse U+0000, and UTF-8 cannot carry a lone
surrogate (JSON's `"\\ud800"` decodes to one). Both are replaced by U+FFFD, the Unicode
replacement character, so a row that was billed is always a row that can be written.

The checks are cheap on the hot path: a string is scanned only when it is not ASCII or holds
a NUL, and a JSON value is rebuilt only when serialising it shows that it must be.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(value: str) -> str:
    """`value` with NUL and lone surrogates replaced by U+FFFD (the same object when clean)."""
    if "\x00" not in value and (value.isascii() or not _UNSTORABLE.search(value)):
        return value
    return _UNSTORABLE.sub(REPLACEMENT, value)


def storable_json(value: Any) -> Any:
    """A JSON value (dicts, lists, strings, ...) whose keys and strings are storable."""
    if not value:  # {}, [], "", None: nothing to clean, and the usual metadata
        return value
    try:
        if b"\\u0000" not in orjson.dumps(value):
            return value
    except TypeError:
        pass  # a lone surrogate (orjson refuses it), or a type orjson cannot write
    return _clean(value)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
