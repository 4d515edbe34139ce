"""Values across the Lua ⇄ Python boundary of the sandbox (spec 04 §2 Lua values, §7.2).

Lua → Python happens in two steps so that no script code ever runs on the way out:
`CHECK_LUA` is a trusted Lua checker (raw `next`, `debug.getmetatable`, no metamethod) that the
sandbox runs on every argument before it leaves Lua; `lua_to_python` then builds the Python value
from lupa objects with raw iteration only. Refused: tables with a metatable, cycles, nesting deeper
than 32 tables, more than 100 000 entries, functions/userdata/threads, non-finite numbers, strings
that are not UTF-8, tables mixing list and map keys. A table with keys exactly 1..n is a list,
one with string keys only a map; an empty table is an (empty) map. Integers stay int, floats stay
float (-0.0 becomes 0.0, which canonical CBOR refuses).

Python → Lua (`python_to_lua`): None → nil, dict → table, list/tuple → 1-based table, str →
UTF-8 Lua string, bytes → Lua string, int/float/bool as is. The runtime must be created with
`encoding=None` (lupa would otherwise wrap Python str as userdata).
"""

from __future__ import annotations

import math
from typing import Any

from lupa import lua54  # type: ignore[import-untyped]

from openprod.core.errors import OpenprodError

MAX_DEPTH = 32
MAX_ENTRIES = 100_000
# python_to_lua only sees values we built or decoded (frames: ≤ 32, JSON: ≤ 64); deeper is a bug
MAX_TO_LUA_DEPTH = 64
LUA_INT_MIN = -(2**63)
LUA_INT_MAX = 2**63 - 1

# Trusted: executed in the runtime's full global environment before any script code, so the locals
# below are the real primitives. Returns `check(v, max_depth, max_entries) -> nil | message`.
CHECK_LUA = r"""
local next, type, mtype, getmt, huge = next, type, math.type, debug.getmetatable, math.huge
local function walk(v, depth, st)
  local t = type(v)
  if t == "nil" or t == "boolean" or t == "string" then return nil end
  if t == "number" then
    if mtype(v) == "float" and (v ~= v or v == huge or v == -huge) then
      return "NaN and infinities cannot be passed"
    end
    return nil
  end
  if t ~= "table" then return "a " .. t .. " cannot be passed" end
  if depth > st.max_depth then return "tables nested deeper than " .. st.max_depth end
  if getmt(v) ~= nil then return "a table with a metatable cannot be passed" end
  if st.path[v] then return "a table that contains itself cannot be passed" end
  st.path[v] = true
  local nint, nstr, maxk = 0, 0, 0
  for k, x in next, v do
    st.count = st.count + 1
    if st.count > st.max_entries then
      return "more than " .. st.max_entries .. " table entries"
    end
    if type(k) == "string" then
      nstr = nstr + 1
    elseif mtype(k) == "integer" and k >= 1 then
      nint = nint + 1
      if k > maxk then maxk = k end
    else
      return "table keys must be strings or list indexes 1..n"
    end
    local err = walk(x, depth + 1, st)
    if err then return err end
  end
  if nint > 0 and nstr > 0 then return "a table cannot mix list items and named keys" end
  if nint ~= maxk then return "a list cannot have holes" end
  st.path[v] = nil
  return nil
end
return function(v, max_depth, max_entries)
  return walk(v, 1, {path = {}, count = 0, max_depth = max_depth, max_entries = max_entries})
end
"""


class BadArgument(OpenprodError):
    """A value that cannot cross the boundary; raised into Lua as a `BadArgument` error."""

    code = "BadArgument"


def make_checker(lua: Any) -> Any:
    """Compile CHECK_LUA in `lua` (call before any untrusted code has run in it)."""
    return lua.execute(CHECK_LUA)


def _text(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise BadArgument(f"{what} is not valid UTF-8") from None


class _Count:
    __slots__ = ("left",)

    def __init__(self, n: int) -> None:
        self.left = n


def lua_to_python(value: Any, *, max_depth: int = MAX_DEPTH,
                  max_entries: int = MAX_ENTRIES) -> Any:
    """The Python value of a Lua value that CHECK_LUA accepted (limits are re-checked here)."""
    return _to_py(value, 1, max_depth, _Count(max_entries))


def _to_py(v: Any, depth: int, max_depth: int, count: _Count) -> Any:
    t = type(v)
    if v is None or t is bool or t is int:
        return v
    if t is float:
        if not math.isfinite(v):
            raise BadArgument("NaN and infinities cannot be passed")
        return 0.0 if v == 0.0 else v
    if t is bytes:
        return _text(v, "a string")
    kind = lua54.lua_type(v)
    if kind != "table":
        raise BadArgument(f"a {kind or t.__name__} cannot be passed")
    if depth > max_depth:
        raise BadArgument(f"tables nested deeper than {max_depth}")
    ints: dict[int, Any] = {}
    strs: dict[str, Any] = {}
    # items() walks with lua_next: raw, no __pairs/__index
    for k, x in v.items():
        count.left -= 1
        if count.left < 0:
            raise BadArgument("too many table entries")
        if type(k) is bytes:
            strs[_text(k, "a table key")] = _to_py(x, depth + 1, max_depth, count)
        elif type(k) is int and k >= 1:
            ints[k] = _to_py(x, depth + 1, max_depth, count)
        else:
            raise BadArgument("table keys must be strings or list indexes 1..n")
    if ints and strs:
        raise BadArgument("a table cannot mix list items and named keys")
    if ints:
        if max(ints) != len(ints):
            raise BadArgument("a list cannot have holes")
        return [ints[i] for i in range(1, len(ints) + 1)]
    return strs


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, e.g. from a JSON "\\ud800" escape
        raise BadArgument("a string is not valid Unicode") from None


def python_to_lua(lua: Any, value: Any) -> Any:
    """A Lua value for `value`, built in `lua` (fresh tables, no metatables)."""
    return _to_lua(lua, value, 1)


def _to_lua(lua: Any, v: Any, depth: int) -> Any:
    t = type(v)
    if v is None or t is bool or t is float or t is bytes:
        return v
    if t is int:
        if not LUA_INT_MIN <= v <= LUA_INT_MAX:
            raise BadArgument("integer out of the 64-bit range")
        return v
    if t is str:
        return _utf8(v)
    if depth > MAX_TO_LUA_DEPTH:
        raise BadArgument(f"value nested deeper than {MAX_TO_LUA_DEPTH}")
    if t is list or t is tuple:
        table = lua.table()
        for i, x in enumerate(v, 1):
            if x is not None:
                table[i] = _to_lua(lua, x, depth + 1)
        return table
    if t is dict:
        table = lua.table()
        for k, x in v.items():
            if type(k) is not str:
                raise BadArgument("map keys must be strings")
            if x is not None:
                table[_utf8(k)] = _to_lua(lua, x, depth + 1)
        return table
    raise BadArgument(f"a {t.__name__} has no Lua form")
