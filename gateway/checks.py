"""Checks for request bodies and query strings: one problems collector, one 400 shape.

Every problem is `{"field", "message"}`; every 400 about fields carries them as
`details.errors` (and the first one's name as `details.field`). Body parsers collect every
problem in `Problems` and raise once; query readers raise at the first bad parameter. Each
typed check answers the checked value, or None after noting why it is not one. Ids are
range-checked against PostgreSQL's bigint and dates against a sane calendar window before any
SQL or datetime arithmetic sees them, so no input can overflow into a 5xx.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from multidict import MultiMapping

from gateway.errors import BadRequest, NotFound

MAX_ID = 2**63 - 1  # PostgreSQL bigint
MIN_MOMENT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_MOMENT = datetime(3000, 1, 1, tzinfo=UTC)  # exclusive
MAX_DECIMAL_PLACES = 18
_DATE_ONLY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PLUS_LOST = re.compile(r"(?<=[0-9]) ([0-9]{2}(?::?[0-9]{2})?)$")
_DIGITS = re.compile(r"[0-9]{1,19}")


def kind(value: Any) -> str:
    """What a JSON value is, for messages: `an object`, `null`, `a string`..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def invalid(field: str, message: str, **details: Any) -> BadRequest:
    """A 400 about one field, in the shape every field problem takes."""
    return BadRequest(f"{field}: {message}", details={
        "field": field, "errors": [{"field": field, "message": message}], **details})


class Problems:
    """Collects every problem of a body, so one 400 names them all."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append({"field": field, "message": message})

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self, summary: str = "") -> None:
        if not self.items:
            return
        listed = "; ".join(f"{p['field']}: {p['message']}" for p in self.items[:5])
        more = f" (and {len(self.items) - 5} more)" if len(self.items) > 5 else ""
        raise BadRequest(f"{summary}{listed}{more}",
                         details={"field": self.items[0]["field"], "errors": self.items})


def body_object(body: Any, what: str = "request body") -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what it is instead."""
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object, not {kind(body)}")
    return body


def unknown_fields(body: Mapping[str, Any], allowed: Iterable[str], problems: Problems) -> None:
    allowed = sorted(set(allowed))
    for name in sorted(set(body) - set(allowed)):
        problems.add(name, f"unknown field; allowed: {', '.join(allowed)}")


# -- typed field checks ------------------------------------------------------------------------

def text(value: Any, field: str, problems: Problems, *, max_chars: int, min_chars: int = 1,
         strip: bool = False, message: str | None = None) -> str | None:
    """A string of `min_chars` to `max_chars` characters (after `strip`) without NUL."""
    if isinstance(value, str):
        checked = value.strip() if strip else value
        if min_chars <= len(checked) <= max_chars and "\x00" not in checked:
            return checked
    problems.add(field, message or (
        f"must be {min_chars} to {max_chars} characters without NUL" if isinstance(value, str)
        else f"must be a string, not {kind(value)}"))
    return None


def whole(value: Any, field: str, problems: Problems, low: int, high: int,
          message: str | None = None) -> int | None:
    """A JSON integer (not a boolean) from `low` to `high`."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    problems.add(field, message or f"must be a whole number from {low} to {high}, "
                                   f"not {value if isinstance(value, int) else kind(value)}")
    return None


def ident(value: Any, field: str, problems: Problems, message: str | None = None) -> int | None:
    """A row id: a whole number from 1 to 2^63 - 1."""
    return whole(value, field, problems, 1, MAX_ID, message or "must be a positive integer id")


def flag(value: Any, field: str, problems: Problems, message: str | None = None) -> bool | None:
    if isinstance(value, bool):
        return value
    problems.add(field, message or f"must be true or false, not {kind(value)}")
    return None


def boolean(value: Any, field: str, problems: Problems) -> None:
    """A JSON boolean, in the OpenAI-shaped entries' words."""
    flag(value, field, problems, f"must be a boolean, not {kind(value)}")


def of_kind(value: Any, field: str, problems: Problems, expected: type) -> bool:
    """`value` is a JSON object (dict), array (list) or string (str), else a problem."""
    if isinstance(value, expected):
        return True
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    name = names[expected]
    problems.add(field, f"must be {name}, not {kind(value)}")
    return False


def object_value(value: Any, field: str, problems: Problems) -> bool:
    return of_kind(value, field, problems, dict)


def array_value(value: Any, field: str, problems: Problems) -> bool:
    return of_kind(value, field, problems, list)


def string_value(value: Any, field: str, problems: Problems) -> bool:
    return of_kind(value, field, problems, str)


def within_chars(chars: int, field: str, problems: Problems, limit: int) -> None:
    if chars > limit:
        problems.add(field, f"is {chars} characters; the limit is {limit}")


def number(value: Any, field: str, problems: Problems, low: float, high: float) -> float | None:
    """A JSON number (integer or not, never a boolean) from `low` to `high`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.add(field, f"must be a number, not {kind(value)}")
        return None
    if not low <= value <= high:
        problems.add(field, f"must be between {low:g} and {high:g}, not {value}")
        return None
    return value


def money(value: Any, field: str, problems: Problems, *, high: Decimal,
          message: str | None = None) -> Decimal | None:
    """USD from 0 to `high` as an exact Decimal (a JSON number or a numeric string)."""
    amount = None
    if not isinstance(value, bool) and isinstance(value, int | float | str) and (
            not isinstance(value, str) or len(value) <= 64):
        try:
            amount = Decimal(str(value))
        except InvalidOperation:
            amount = None
    if (amount is None or not amount.is_finite() or not 0 <= amount <= high
            or -int(amount.as_tuple().exponent) > MAX_DECIMAL_PLACES):
        problems.add(field, message or f"must be a number of USD from 0 to {high} with at "
                                       f"most {MAX_DECIMAL_PLACES} decimal places")
        return None
    return amount


def strings(value: Any, field: str, problems: Problems, *, max_items: int, max_chars: int,
            min_items: int = 0, message: str | None = None) -> list[str] | None:
    """A list of `min_items` to `max_items` non-empty strings of at most `max_chars`."""
    if (isinstance(value, list) and min_items <= len(value) <= max_items
            and all(isinstance(s, str) and 0 < len(s) <= max_chars and "\x00" not in s
                    for s in value)):
        return list(value)
    problems.add(field, message or f"must be a list of at most {max_items} non-empty strings "
                                   f"of at most {max_chars} characters")
    return None


def string_map(value: Any, field: str, problems: Problems, *, max_pairs: int,
               max_key_chars: int, max_value_chars: int, message: str | None = None,
               nul_ok: bool = False) -> dict[str, str] | None:
    """An object of at most `max_pairs` string values under non-empty names (without NUL
    unless `nul_ok`: the proxy's usage rows make such text storable themselves)."""
    if isinstance(value, dict) and len(value) <= max_pairs and all(
            isinstance(k, str) and 0 < len(k) <= max_key_chars and isinstance(v, str)
            and len(v) <= max_value_chars and (nul_ok or "\x00" not in k + v)
            for k, v in value.items()):
        return dict(value)
    problems.add(field, message or (
        f"must be an object of at most {max_pairs} string values (keys of 1 to "
        f"{max_key_chars} characters, values of at most {max_value_chars})"))
    return None


def json_object(value: Any, field: str, problems: Problems, *, max_bytes: int,
                nul_ok: bool = False) -> dict[str, Any] | None:
    """Any JSON object of at most `max_bytes` serialised, with no NUL in it (jsonb has none)
    unless `nul_ok`."""
    if not isinstance(value, dict):
        problems.add(field, f"must be an object, not {kind(value)}")
        return None
    try:
        size = len(orjson.dumps(value))
    except TypeError:  # not JSON at all (only reachable from Python callers)
        size = max_bytes + 1
    if size > max_bytes:
        problems.add(field, f"must serialise to at most {max_bytes} bytes of JSON")
        return None
    if not nul_ok and _has_nul(value):
        problems.add(field, "must not contain NUL characters")
        return None
    return value


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


# -- fields every chat entry shape has (gateway/entries/) ------------------------------------

MAX_MODEL_CHARS = 256
MAX_OUTPUT_TOKENS = 2**31 - 1  # the ledger's integer columns
MAX_STOP_SEQUENCES = 4
MAX_METADATA_BYTES = 16_384


def model_name(value: Any, field: str, problems: Problems) -> str:
    """The `model` every entry shape requires: a non-empty string of at most 256 characters."""
    if not isinstance(value, str) or not value.strip():
        problems.add(field, f"is required and must be a non-empty string, not {kind(value)}")
        return ""
    if len(value) > MAX_MODEL_CHARS:  # a NUL is made storable by the usage row itself
        problems.add(field, f"must be at most {MAX_MODEL_CHARS} characters")
    return value


def output_tokens(value: Any, field: str, problems: Problems) -> None:
    """A cap on output tokens: 1 to what the ledger can store."""
    whole(value, field, problems, 1, MAX_OUTPUT_TOKENS)


def stop_sequences(value: Any, field: str, problems: Problems) -> None:
    """OpenAI's `stop`: a string or an array of 1 to 4 strings."""
    if isinstance(value, str):
        return
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) for s in value)):
        problems.add(field,
                     f"must be a string or an array of 1 to {MAX_STOP_SEQUENCES} strings")


def moment(value: Any, field: str, problems: Problems, *, end: bool = False) -> datetime | None:
    """An ISO 8601 date or date-time (naive: UTC) within the window, as an aware UTC datetime.

    A date-only `end` stands for the end of that day (the next midnight).
    """
    found = _moment(value, end=end)
    if isinstance(found, datetime):
        return found
    problems.add(field, found)
    return None


def _moment(value: Any, *, end: bool) -> datetime | str:
    window = f"from {MIN_MOMENT.date()} to {(MAX_MOMENT - timedelta(days=1)).date()}"
    if not isinstance(value, str) or len(value) > 64:
        return "must be an ISO 8601 date or date-time"
    if _DATE_ONLY.fullmatch(value):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return "is not a valid date"
        if not MIN_MOMENT.date() <= day < MAX_MOMENT.date():
            return f"must be a date {window}"
        start = datetime.combine(day, time(), UTC)
        return start + timedelta(days=1) if end else start  # a date-only end includes the day
    # An unencoded "+02:00" offset arrives as " 02:00" (a query string's "+" is a space).
    value = _PLUS_LOST.sub(r"+\1", value)
    try:
        parsed = datetime.fromisoformat(value)
        if not MIN_MOMENT.date() <= parsed.date() < MAX_MOMENT.date():
            return f"must be a date-time {window}"
        return (parsed.replace(tzinfo=UTC) if parsed.tzinfo is None
                else parsed.astimezone(UTC))
    except (ValueError, OverflowError):
        return "must be an ISO 8601 date or date-time"


# -- query strings -----------------------------------------------------------------------------

Query = Mapping[str, str]


def read_query(query: MultiMapping[str], accepted: Iterable[str],
               aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """The query under canonical names: an unknown name, or one given twice (under any of its
    names), is a 400 naming it and the accepted ones."""
    accepted = tuple(accepted)
    aliases = {a: c for a, c in (aliases or {}).items() if c in accepted}
    out: dict[str, str] = {}
    for name, value in query.items():
        canonical = aliases.get(name, name)
        if canonical not in accepted:
            names = sorted({*accepted, *aliases})
            raise invalid(name, f"unknown query parameter; accepted: {', '.join(names)}",
                          accepted=names)
        if canonical in out:
            raise invalid(name, f"is given more than once (as {canonical} or an alias)")
        out[canonical] = value
    return out


def id_param(query: Query, name: str) -> int | None:
    """An optional id in the query: 1 to 2^63 - 1, else 400."""
    value = query.get(name)
    if value is None:
        return None
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_ID:
        raise invalid(name, "must be a positive integer id")
    return int(value)


def whole_param(query: Query, name: str, low: int, high: int, default: int) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise invalid(name, f"must be a whole number from {low} to {high}")
    return int(value)


def text_param(query: Query, name: str, max_chars: int = 200) -> str | None:
    value = query.get(name)
    if value is not None and (not 1 <= len(value) <= max_chars or "\x00" in value):
        raise invalid(name, f"must be 1 to {max_chars} characters without NUL")
    return value


def choice(query: Query, name: str, allowed: Iterable[str], default: str) -> str:
    allowed = tuple(allowed)
    value = query.get(name, default)
    if value not in allowed:
        raise invalid(name, f"must be one of {', '.join(allowed)}")
    return value


def date_param(query: Query, name: str, *, end: bool = False) -> datetime | None:
    value = query.get(name)
    if value is None:
        return None
    found = _moment(value, end=end)
    if isinstance(found, str):
        raise invalid(name, found)
    return found


def path_id(value: str, what: str) -> int:
    """An id in the URL path: anything but 1 to 2^63 - 1 names no row, so 404."""
    if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_ID:
        raise NotFound(f"{what} {value[:40]!r} does not exist")
    return int(value)
