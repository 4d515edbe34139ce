"""Field types and scalar values: the `[kind, data]` arrays of spec 01 §1.3, and names.

Admission checks only shape (`check_value`); whether a kind fits a field is a command check.
User input (JSON-ish Python values) becomes a value through `from_user`, and back via `to_user`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from openprod.core.errors import ValidationError

FTYPES = frozenset(
    [
        "text", "integer", "float", "boolean", "date", "datetime",
        "duration", "enum", "entity_ref", "blob_ref",
    ]
)
KINDS = FTYPES | {"ref"}
MAX_TEXT = 1 << 20
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

MODULE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
LOCAL_RE = re.compile(r"[a-z][a-z0-9_]{0,47}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
RESERVED_MODULES = frozenset(["core", "workspace", "openprod", "system"])

Value = list[Any]  # [kind, data]


def is_module(s: object) -> bool:
    return type(s) is str and MODULE_RE.fullmatch(s) is not None


def is_local_name(s: object) -> bool:
    return type(s) is str and LOCAL_RE.fullmatch(s) is not None


def is_facet(s: object) -> bool:
    """A table id `module.Table`."""
    if type(s) is not str or s.count(".") != 1:
        return False
    mod, table = s.split(".")
    return MODULE_RE.fullmatch(mod) is not None and TABLE_RE.fullmatch(table) is not None


def is_edge_type(s: object) -> bool:
    if type(s) is not str or s.count(".") != 1:
        return False
    mod, name = s.split(".")
    return MODULE_RE.fullmatch(mod) is not None and LOCAL_RE.fullmatch(name) is not None


def is_field_key(s: object) -> bool:
    """`module.Table.field`."""
    if type(s) is not str or s.count(".") != 2:
        return False
    facet, _, field = s.rpartition(".")
    return is_facet(facet) and LOCAL_RE.fullmatch(field) is not None


def field_key(facet: str, field: str) -> str:
    return f"{facet}.{field}"


def split_field_key(key: str) -> tuple[str, str]:
    facet, _, field = key.rpartition(".")
    return facet, field


def _is_real_date(s: str) -> bool:
    if DATE_RE.fullmatch(s) is None:
        return False
    try:
        dt.date.fromisoformat(s)
    except ValueError:
        return False
    return True


def value_problem(v: object) -> str | None:
    """Why v is not a well-formed scalar value, or None if it is."""
    if type(v) is not list or len(v) != 2 or type(v[0]) is not str:
        return "a value must be [kind, data]"
    kind, data = v
    t = type(data)
    if kind == "text" or kind == "enum":
        if t is not str:
            return f"{kind} data must be text"
        if len(data.encode()) > MAX_TEXT:
            return "text exceeds 1 MiB"
        if kind == "enum" and not data:
            return "enum key must not be empty"
        return None
    if kind in ("integer", "datetime", "duration"):
        if t is not int:
            return f"{kind} data must be an integer"
        if not I64_MIN <= data <= I64_MAX:
            return f"{kind} data out of 64-bit range"
        return None
    if kind == "float":
        if t is not float or not math.isfinite(data):
            return "float data must be a finite float"
        if data == 0.0 and math.copysign(1.0, data) < 0:
            return "-0.0 must be stored as 0.0"
        return None
    if kind == "boolean":
        return None if t is bool else "boolean data must be true or false"
    if kind == "date":
        return None if t is str and _is_real_date(data) else "date must be a real YYYY-MM-DD"
    if kind == "entity_ref":
        return None if t is bytes and len(data) == 16 else "entity_ref must be a 16-byte id"
    if kind == "blob_ref":
        return None if t is bytes and len(data) == 32 else "blob_ref must be a 32-byte hash"
    if kind == "ref":
        if (
            t is list
            and len(data) == 2
            and type(data[0]) is bytes
            and len(data[0]) == 16
            and is_field_key(data[1])
        ):
            return None
        return "ref must be [entity id, field_key]"
    return f"unknown value kind {kind!r}"


def check_value(v: object) -> Value:
    problem = value_problem(v)
    if problem is not None:
        raise ValidationError(problem, value=repr(v)[:200])
    assert isinstance(v, list)
    return v


def from_user(ftype: str, x: Any, *, choices: list[str] | None = None) -> Value:
    """Convert a user (JSON) value to the canonical value of a field of type ftype."""
    def bad(why: str) -> ValidationError:
        article = "an" if ftype[:1] in "aeiou" else "a"
        return ValidationError(f"{why} for {article} {ftype} field", ftype=ftype,
                               value=repr(x)[:200])

    if ftype == "text":
        if type(x) is not str:
            raise bad("expected text")
        v: Value = ["text", x]
    elif ftype in ("integer", "duration"):
        if type(x) is not int:
            raise bad("expected an integer")
        v = [ftype, x]
    elif ftype == "datetime":
        if type(x) is int:
            v = ["datetime", x]
        elif type(x) is str:
            try:
                parsed = dt.datetime.fromisoformat(x.replace("Z", "+00:00"))
            except ValueError:
                raise bad("expected ms since epoch or an ISO 8601 datetime") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            v = ["datetime", int(parsed.timestamp() * 1000)]
        else:
            raise bad("expected ms since epoch or an ISO 8601 datetime")
    elif ftype == "float":
        if type(x) is int:
            x = float(x)
        if type(x) is not float or not math.isfinite(x):
            raise bad("expected a finite number")
        v = ["float", 0.0 if x == 0.0 else x]
    elif ftype == "boolean":
        if type(x) is not bool:
            raise bad("expected true or false")
        v = ["boolean", x]
    elif ftype == "date":
        if type(x) is not str or not _is_real_date(x):
            raise bad("expected a date YYYY-MM-DD")
        v = ["date", x]
    elif ftype == "enum":
        if type(x) is not str:
            raise bad("expected a choice key")
        if choices is not None and x not in choices:
            raise ValidationError(
                f"{x!r} is not one of the field's choices", choices=choices, value=x
            )
        v = ["enum", x]
    elif ftype == "entity_ref":
        from openprod.core import ids

        try:
            v = ["entity_ref", ids.from_text(x) if type(x) is str else b""]
        except ValueError:
            raise bad("expected a record id") from None
    elif ftype == "blob_ref":
        try:
            data = bytes.fromhex(x) if type(x) is str else b""
        except ValueError:
            raise bad("expected a 64-hex BLAKE3 hash") from None
        v = ["blob_ref", data]
    else:
        raise ValidationError(f"unknown field type {ftype!r}", ftype=ftype)
    return check_value(v)


def to_user(v: Value | None) -> Any:
    """The JSON form of a value (ids as text, hashes as hex)."""
    if v is None:
        return None
    kind, data = v
    if kind == "entity_ref":
        from openprod.core import ids

        return ids.to_text(data)
    if kind == "blob_ref":
        return bytes(data).hex()
    if kind == "ref":
        from openprod.core import ids

        return {"ref": [ids.to_text(data[0]), data[1]]}
    return data
