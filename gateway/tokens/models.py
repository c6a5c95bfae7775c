"""Which tokenizer counts a model: an exact OpenAI encoding, or an o200k estimate times a factor."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from gateway.tokens.encodings import ENCODINGS
from gateway.tomlfile import read_toml

ESTIMATE_ENCODING = "o200k_base"


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tokenizer:
    encoding: str
    factor: Decimal | None = None  # None: the count is exact
    known: bool = True  # the model matched the configuration (else: the default estimate)

    @property
    def exact(self) -> bool:
        return self.factor is None


class ModelTokenizers:
    def __init__(self, encodings: dict[str, str], estimates: dict[str, Decimal],
                 default_factor: Decimal) -> None:
        for pattern, encoding in encodings.items():
            if encoding not in ENCODINGS:
                raise TokenConfigError(f"encodings.{pattern!r}: unknown encoding {encoding!r}; "
                                       f"known: {', '.join(ENCODINGS)}")
        for pattern, factor in estimates.items():
            if not isinstance(factor, Decimal | int) or not Decimal(factor).is_finite() \
                    or factor <= 0:
                raise TokenConfigError(f"estimates.{pattern!r} must be a positive number")
        rules: list[tuple[str, Tokenizer]] = [
            (p, Tokenizer(e)) for p, e in encodings.items()]
        rules += [(p, Tokenizer(ESTIMATE_ENCODING, Decimal(f))) for p, f in estimates.items()]
        self._exact = {p: t for p, t in rules if "*" not in p}
        # longest glob first: "gpt-4-turbo*" before "gpt-4*"
        self._globs = sorted(((p, t) for p, t in rules if "*" in p), key=lambda r: -len(r[0]))
        self._default = Tokenizer(ESTIMATE_ENCODING, default_factor, known=False)
        self._cache: dict[str, Tokenizer] = {}

    @classmethod
    def load(cls, path: Path) -> ModelTokenizers:
        return cls.from_mapping(read_toml(path, TokenConfigError, "token configuration"))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> ModelTokenizers:
        default = raw.get("default_factor", Decimal("1.2"))
        if not isinstance(default, Decimal | int) or default <= 0:
            raise TokenConfigError("default_factor must be a positive number")
        return cls(dict(raw.get("encodings", {})), dict(raw.get("estimates", {})),
                   Decimal(default))

    def resolve(self, model: str) -> Tokenizer:
        hit = self._cache.get(model)
        if hit is None:
            name = model.rpartition("/")[2]  # "openai/gpt-4o" -> "gpt-4o"
            hit = self._exact.get(name) or next(
                (t for p, t in self._globs if fnmatchcase(name, p)), self._default)
            if len(self._cache) < 10_000:
                self._cache[model] = hit
        return hit
