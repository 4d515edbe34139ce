"""The Lua sandbox: one script run in a fresh lupa Lua 5.4 runtime (spec 04 §7.2, §7.3, §7.6).

`run_script` owns everything that happens inside Lua: the trusted bootstrap (private references to
`debug.sethook`, `coroutine.*` and `pcall`, the pattern wrappers on the real string table, the
locked string metatable), the script's environment, the instruction/time hook, the sticky
termination flag, the `core`/`json`/`fs`/`ui` tables, awaitable handles, log limits and the
translation of how the run ended into an `Outcome`. It does not know what `core.*` calls mean:
each is forwarded to the `call` callback (the host forwards it over the pipe; tests pass a fake).

How a run ends (`Outcome.code`):
- success: `ok=True`, `code=None`.
- `InstructionLimit`, `TimeLimit` (hook), `MemoryLimit` (`max_memory`'s "not enough memory"), and
  `Cancelled`/`TimeLimit`/`MemoryLimit`/`InstructionLimit`/`HostCrashed` when `call` answers
  with one of those codes: sticky — once set, every later hook tick and every `pcall`, `xpcall`,
  `coroutine.resume/wrap/close` re-raises, so no script can swallow them.
- `ScriptError`: any other uncaught error: runtime and compile errors (a binary chunk is refused
  by `load(..., "t")`), top-level `coroutine.yield`. A `core` error object raised by us
  (`BadArgument`, `LimitExceeded`, `NotFound`, ... the §7.3 codes) that nobody caught also ends
  as `ScriptError` (04 §7.3 "Uncaught → run fails (ScriptError)"); its message is
  `"Code: message"` and `Outcome.error_code` keeps the inner code for the UI and the tests.
- `BadArgument`: `args`/`context` given by the caller that have no Lua form (nothing ran).

Limits. Instructions are counted by a count hook every 10 000 instructions per thread; the hook
also checks the deadline, and so does every 10th coroutine resume (a tree of coroutines that
each stay under one hook period never reaches a hook). Time spent inside one C call (a pattern
match that passed the wrappers, a plain `find`) is invisible to both: the runner's wall-clock
kill of the host process is the guaranteed stop. `max_memory` counts the script's heap on top of
what the sandbox itself set up. Every Python callback runs with the limit lifted (lupa aborts the
process on an allocation failure in an unprotected API call) and re-arms it before any script
code runs again; going over it while lifted is reported as `MemoryLimit`.

Hooks are off while a hook runs, and an error raised there calls the message handler in that
state: a script's `xpcall` handler is therefore skipped when invoked inside a hook, and
`coroutine.close` does not run the `__close` handlers of a coroutine that died by an error (it
just returns `false, err`).

Exceptions raised by `call` or `log` (the host's broken pipe, a protocol error) stop the script
at once and propagate out of `run_script` after the runtime is dropped.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Collection
from typing import Any

import attrs
from lupa import lua54  # type: ignore[import-untyped]

from openprod.scripts.luavalues import (
    MAX_DEPTH,
    MAX_ENTRIES,
    BadArgument,
    lua_to_python,
    make_checker,
    python_to_lua,
)

MIB = 1024 * 1024
MAX_TIMEOUT_S = 120
MAX_MEMORY_MIB = 256
MAX_INSTRUCTIONS = 1_000_000_000
HOOK_EVERY = 10_000
RESUME_CHECK = 10  # coroutine resumes between deadline checks (see `tick` in BOOTSTRAP)
LOG_LINE_BYTES = 4096
LOG_LINES = 1000
PATTERN_SUBJECT_BYTES = MIB
PATTERN_BYTES = 256
PATTERN_QUANTIFIERS = 8
JSON_DEPTH = 64
JSON_ENTRIES = 1_000_000
JSON_BYTES = 16 * MIB
# Lua's LUA_IDSIZE (60) minus the terminator: how much of a "=name" chunk name messages show
_IDSIZE = 59

# §7.3 calls the sandbox forwards unchanged to `call`
FORWARDED = (
    "get_field", "get_record", "exists", "tables_of", "query", "query_one", "edges",
    "create_entity", "delete_entity", "attach_facet", "detach_facet", "set_field", "set_text",
    "set_reference", "create_edge", "delete_edge", "move_edge",
)
# codes a `call` answer may carry that end the run instead of being raised as catchable errors
UNCATCHABLE = frozenset(
    ["InstructionLimit", "MemoryLimit", "TimeLimit", "Cancelled", "HostCrashed"]
)
LOG_LEVELS = ("debug", "info", "warn", "error")

CallFn = Callable[[str, list[Any]], tuple[bool, Any]]
LogFn = Callable[[str, str], None]


def _at_most(cap: float) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_inst: Any, attr: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not 0 < value <= cap:
            raise ValueError(f"{attr.name} must be > 0 and ≤ {cap}, not {value!r}")

    return check


def _whole(value: Any) -> Any:
    """TOML writes `1e9` as a float: accept whole floats where an integer is meant."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


@attrs.frozen
class Limits:
    """Per-run limits (04 §7.6 defaults, §2 caps)."""

    timeout_s: float = attrs.field(default=30.0, validator=[
        attrs.validators.instance_of((int, float)), _at_most(MAX_TIMEOUT_S)])
    memory_mib: int = attrs.field(default=16, converter=_whole, validator=[
        attrs.validators.instance_of(int), _at_most(MAX_MEMORY_MIB)])
    max_instructions: int = attrs.field(default=200_000_000, converter=_whole, validator=[
        attrs.validators.instance_of(int), _at_most(MAX_INSTRUCTIONS)])

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Limits:
        """From a frame's `limits` map (missing keys take the defaults; unknown keys refused)."""
        unknown = set(d) - {"timeout_s", "memory_mib", "max_instructions"}
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}")
        return cls(**d)

    def to_wire(self) -> dict[str, Any]:
        return {"timeout_s": self.timeout_s, "memory_mib": self.memory_mib,
                "max_instructions": self.max_instructions}


@attrs.frozen
class Outcome:
    """How a run ended. `line` is the script line (int) when one is known."""

    ok: bool
    code: str | None = None
    message: str | None = None
    line: int | None = None
    traceback: str | None = None
    log_truncated: bool = False
    error_code: str | None = None  # the inner core error code of an uncaught core error

    def to_wire(self) -> dict[str, Any]:
        """The `done` frame fields (None fields left out)."""
        d: dict[str, Any] = {"ok": self.ok, "log_truncated": self.log_truncated}
        for k in ("code", "message", "line", "traceback", "error_code"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


# Trusted bootstrap, executed in the runtime's full global environment before any script code:
# every local below is the real primitive, unreachable from the script's environment.
BOOTSTRAP = r"""
local sethook, getinfo, traceback, getmt_raw =
  debug.sethook, debug.getinfo, debug.traceback, debug.getmetatable
local co_create, co_resume, co_yield, co_status, co_running, co_isyieldable, co_close =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.status, coroutine.running,
  coroutine.isyieldable, coroutine.close
local pcall, xpcall, error, type, next, select, tostring, rawget, rawequal, setmetatable, load =
  pcall, xpcall, error, type, next, select, tostring, rawget, rawequal, setmetatable, load
local mtype, huge, floor = math.type, math.huge, math.floor
local concat = table.concat
local string = string
local s_find, s_match, s_gmatch, s_gsub, s_sub, s_byte =
  string.find, string.match, string.gmatch, string.gsub, string.sub, string.byte
local G = _G

return function(py, check, cfg)
  local forward, pylog, pylocal, clock = py.forward, py.log, py.pylocal, py.clock
  local slot = cfg.slot
  local MAX_INS, DEADLINE, HOOK_EVERY = cfg.max_instructions, cfg.deadline, cfg.hook_every
  local RESUME_CHECK = cfg.resume_check
  local SOURCE, CHUNK = cfg.source, cfg.chunk
  local MAX_DEPTH, MAX_ENTRIES = cfg.max_depth, cfg.max_entries
  local LOG_LINE, LOG_LINES = cfg.log_line, cfg.log_lines
  local MSG_INS, MSG_TIME, MSG_MEM = cfg.msg_instructions, cfg.msg_time, cfg.msg_memory
  local MEMERR = "not enough memory"
  local KILL, REPORT = {}, {}
  local killed, kill_msg = nil, nil
  local count = 0
  local errcode = setmetatable({}, {__mode = "k"})
  local errmsg = setmetatable({}, {__mode = "k"})
  local nlines, log_truncated = 0, false
  local rep_code, rep_msg, rep_line, rep_tb = nil, nil, nil, nil

  local function hook()
    count = count + HOOK_EVERY
    if not killed then
      if count > MAX_INS then
        killed, kill_msg = "InstructionLimit", MSG_INS
      elseif clock() > DEADLINE then
        killed, kill_msg = "TimeLimit", MSG_TIME
      end
    end
    if killed then error(KILL, 0) end
  end

  local function stop(code, msg)
    if not killed then killed, kill_msg = code, msg end
    error(KILL, 0)
  end

  local ERRMT = {
    __metatable = false,
    __tostring = function(e) return (errcode[e] or "?") .. ": " .. (errmsg[e] or "") end,
  }
  local function raise(code, msg)
    local e = setmetatable({code = code, message = msg}, ERRMT)
    errcode[e], errmsg[e] = code, msg
    error(e, 3)
  end

  -- A Python call. Arguments and results travel through `slot` and the call itself takes and
  -- returns nothing but a small integer, so lupa never allocates Lua memory for it; the Python
  -- side lifts the memory limit while it works and re-arms it before returning (status 3: it
  -- went over). No Lua code runs with the limit lifted, so the hook may raise anywhere.
  local function pycall(fn, n, ...)
    slot.n = n
    for i = 1, n do slot[i] = (select(i, ...)) end
    local st = fn()
    local a, b = slot.a, slot.b
    slot.a, slot.b = nil, nil
    for i = 1, n do slot[i] = nil end
    if killed then error(KILL, 0) end
    if st == 0 then return a end
    if st == 1 then raise(a, b) end
    if st == 3 then stop("MemoryLimit", MSG_MEM) end
    if st == 4 then error("the sandbox could not serve this call (C stack too deep?)", 0) end
    stop(a, b)
  end

  local function call(name, n, ...)
    if killed then error(KILL, 0) end
    for i = 1, n do
      local bad = check((select(i, ...)), MAX_DEPTH, MAX_ENTRIES)
      if bad then raise("BadArgument", name .. ": argument " .. i .. ": " .. bad) end
    end
    return pycall(forward, n + 1, name, ...)
  end

  local core = {}
  local names = cfg.forwarded
  for i = 1, #names do
    local name = names[i]
    core[name] = function(...) return call(name, select("#", ...), ...) end
  end

  -- log and print stay in the host: 4 KiB per line, LOG_LINES per run, the rest dropped
  local LEVELS = {debug = true, info = true, warn = true, error = true}
  local function emit(level, msg)
    if nlines >= LOG_LINES then log_truncated = true; return end
    nlines = nlines + 1
    if #msg > LOG_LINE then msg = s_sub(msg, 1, LOG_LINE) end
    pycall(pylog, 2, level, msg)
  end
  core.log = function(level, msg)
    if killed then error(KILL, 0) end
    if type(level) ~= "string" or not LEVELS[level] then
      raise("BadArgument", "core.log: level must be debug, info, warn or error")
    end
    if mtype(msg) ~= nil then msg = tostring(msg)
    elseif type(msg) ~= "string" then raise("BadArgument", "core.log: message must be a string")
    end
    emit(level, msg)
  end
  local function print_(...)
    if killed then error(KILL, 0) end
    if nlines >= LOG_LINES then log_truncated = true; return end
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    emit("info", concat(parts, "\t"))
  end

  local NOW = cfg.now
  core.now = function() return NOW end
  core.context = function()
    if killed then error(KILL, 0) end
    return pycall(pylocal, 1, "context")
  end

  -- awaitables: inert handles, registered here, forwarded only when awaited (once)
  local HANDLE_MT = {__metatable = false, __tostring = function() return "awaitable" end}
  local pending = setmetatable({}, {__mode = "k"})
  local function handle(spec)
    local h = setmetatable({}, HANDLE_MT)
    pending[h] = spec
    return h
  end
  core.sleep = function(ms)
    if killed then error(KILL, 0) end
    if mtype(ms) == nil or ms ~= ms or ms < 0 or ms == huge then
      raise("BadArgument", "core.sleep: ms must be a non-negative number")
    end
    return handle({kind = "sleep", ms = floor(ms)})
  end
  core.await = function(h)
    if killed then error(KILL, 0) end
    local spec = nil
    if type(h) == "table" then spec = pending[h] end
    if spec == nil then
      raise("BadArgument", "core.await: not an awaitable, or already awaited")
    end
    pending[h] = nil
    return call("await", 1, spec)
  end

  local fs, ui = nil, nil
  if cfg.fs_read or cfg.fs_write then
    fs = {}
    if cfg.fs_read then
      fs.read = function(path)
        if killed then error(KILL, 0) end
        if type(path) ~= "string" then raise("BadArgument", "fs.read: path must be a string") end
        return handle({kind = "fs.read", path = path})
      end
    end
    if cfg.fs_write then
      fs.write = function(path, data)
        if killed then error(KILL, 0) end
        if type(path) ~= "string" then raise("BadArgument", "fs.write: path must be a string") end
        if type(data) ~= "string" then raise("BadArgument", "fs.write: data must be a string") end
        return handle({kind = "fs.write", path = path, data = data})
      end
    end
  end
  if cfg.ui then
    ui = {notify = function(...) return call("ui.notify", select("#", ...), ...) end}
  end

  local json = {
    encode = function(v)
      if killed then error(KILL, 0) end
      local bad = check(v, cfg.json_depth, cfg.json_entries)
      if bad then raise("BadArgument", "json.encode: " .. bad) end
      return pycall(pylocal, 2, "json.encode", v)
    end,
    decode = function(s)
      if killed then error(KILL, 0) end
      if type(s) ~= "string" then raise("BadArgument", "json.decode: expects a string") end
      return pycall(pylocal, 2, "json.decode", s)
    end,
  }

  -- pattern functions: their time is invisible to the hook, so refuse the expensive shapes
  local P_SUBJECT, P_LEN, P_Q = cfg.pattern_subject, cfg.pattern_len, cfg.pattern_quantifiers
  local function pattern_check(fname, s, p)
    if killed then error(KILL, 0) end
    if type(s) == "string" and #s > P_SUBJECT then
      raise("LimitExceeded", "string." .. fname .. ": subject longer than " .. P_SUBJECT
        .. " bytes")
    end
    if type(p) == "string" then
      local n = #p
      if n > P_LEN then
        raise("LimitExceeded", "string." .. fname .. ": pattern longer than " .. P_LEN .. " bytes")
      end
      local q, i = 0, 1
      while i <= n do
        local c = s_byte(p, i)
        if c == 37 then  -- '%' escapes the next character
          i = i + 2
        else
          if c == 42 or c == 43 or c == 45 or c == 63 then q = q + 1 end  -- * + - ?
          i = i + 1
        end
      end
      if q > P_Q then
        raise("LimitExceeded", "string." .. fname .. ": pattern with more than " .. P_Q
          .. " quantifiers")
      end
    end
  end
  string.find = function(s, p, init, plain)
    if not plain then pattern_check("find", s, p) end
    return s_find(s, p, init, plain)
  end
  string.match = function(s, p, init)
    pattern_check("match", s, p)
    return s_match(s, p, init)
  end
  string.gmatch = function(s, p, init)
    pattern_check("gmatch", s, p)
    return s_gmatch(s, p, init)
  end
  string.gsub = function(s, p, repl, n)
    pattern_check("gsub", s, p)
    return s_gsub(s, p, repl, n)
  end
  string.dump = nil
  getmt_raw("").__metatable = false

  -- finalizers run with hooks off: no __gc for scripts
  local function setmetatable_(t, mt)
    if killed then error(KILL, 0) end
    if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
      error("setmetatable: __gc metamethods are not allowed in scripts", 2)
    end
    return setmetatable(t, mt)
  end

  -- Hooks are off while a hook runs, and an error raised there (the hook's own stop, or a C
  -- stack overflow on calling it) runs the message handler in that state and leaves a dying
  -- coroutine in it. So: no script message handler runs inside a hook (`hooked`), and the
  -- __close handlers of a coroutine that died by an error are never run (`errored`).
  local function hooked()
    local level = 2
    while true do
      local info = getinfo(level, "n")
      if info == nil then return false end
      if info.namewhat == "hook" then return true end
      level = level + 1
    end
  end
  local errored = setmetatable({}, {__mode = "k"})
  local function note_death(co, ok, e)
    if not ok and type(co) == "thread" then errored[co] = {e} end
  end

  -- every way to catch an error re-raises a pending termination
  local function after(ok, ...)
    if killed then error(KILL, 0) end
    if not ok and rawequal((...), MEMERR) then stop("MemoryLimit", MSG_MEM) end
    return ok, ...
  end
  local function pcall_(f, ...)
    if killed then error(KILL, 0) end
    return after(pcall(f, ...))
  end
  -- an error raised by the hook calls the message handler inside the hook, where hooks are
  -- off: once terminated, a script's handler must not run at all
  local function xpcall_(f, h, ...)
    if killed then error(KILL, 0) end
    if type(h) ~= "function" then
      error("bad argument #2 to 'xpcall' (function expected)", 2)
    end
    return after(xpcall(f, function(e)
      if killed or hooked() then return e end
      return h(e)
    end, ...))
  end
  -- a hook set from Lua does not follow new coroutines: arm each one
  local function create_(f)
    if killed then error(KILL, 0) end
    local co = co_create(f)
    sethook(co, hook, "", HOOK_EVERY)
    return co
  end
  local function resumed(co, ok, ...)
    note_death(co, ok, (...))
    return after(ok, ...)
  end
  -- Each thread counts its own instructions, so a tree of short coroutines (each under one hook
  -- period) never reaches a hook; between two resumes at most one resume chain runs, so checking
  -- the deadline every few resumes bounds the time such a tree can take.
  local resumes = 0
  local function tick()
    resumes = resumes + 1
    if resumes >= RESUME_CHECK then
      resumes = 0
      if not killed and clock() > DEADLINE then killed, kill_msg = "TimeLimit", MSG_TIME end
    end
    if killed then error(KILL, 0) end
  end
  local function resume_(co, ...)
    tick()
    return resumed(co, co_resume(co, ...))
  end
  local function close_(co)
    if killed then error(KILL, 0) end
    local death = errored[co]
    if death ~= nil then return false, death[1] end
    return after(co_close(co))
  end
  local function wrap_after(co, ok, ...)
    note_death(co, ok, (...))
    if killed then error(KILL, 0) end
    if ok then return ... end
    local e = ...
    if rawequal(e, MEMERR) then stop("MemoryLimit", MSG_MEM) end
    error(e, 0)
  end
  local function wrap_(f)
    local co = create_(f)
    return function(...)
      tick()
      return wrap_after(co, co_resume(co, ...))
    end
  end

  local env = {}
  local plain = {"assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring",
    "type", "rawequal", "rawget", "rawset", "rawlen", "getmetatable"}
  for i = 1, #plain do env[plain[i]] = G[plain[i]] end
  local function copy(t)
    local c = {}
    for k, v in next, t do c[k] = v end
    return c
  end
  env.setmetatable, env.pcall, env.xpcall, env.print = setmetatable_, pcall_, xpcall_, print_
  env._VERSION = G._VERSION
  env._G = env
  env.string, env.table, env.math, env.utf8 = copy(string), copy(table), copy(math), copy(utf8)
  env.coroutine = {create = create_, wrap = wrap_, resume = resume_, yield = co_yield,
    status = co_status, running = co_running, isyieldable = co_isyieldable, close = close_}
  env.core, env.json, env.args, env.fs, env.ui = core, json, cfg.args, fs, ui

  -- the top-level message handler: reads the error without running script code (no
  -- metamethod, no tostring of foreign objects) and records it as plain strings
  local function handler(e)
    rep_code, rep_msg, rep_line, rep_tb = nil, nil, nil, nil
    local level = 2
    while true do
      local info = getinfo(level, "Sl")
      if info == nil then break end
      if info.source == CHUNK then rep_line = info.currentline; break end
      level = level + 1
    end
    if rawequal(e, KILL) then
      rep_msg = nil
    elseif type(e) == "table" and errcode[e] ~= nil then
      rep_code, rep_msg = errcode[e], errmsg[e]
    elseif type(e) == "string" then
      rep_msg = e
    elseif mtype(e) ~= nil then
      rep_msg = tostring(e)
    else
      rep_msg = "error object of type " .. type(e)
    end
    rep_tb = traceback(nil, 2)
    return REPORT
  end

  return function()
    local fn, e = load(SOURCE, CHUNK, "t", env)
    local ok = false
    SOURCE = nil
    if fn ~= nil then
      sethook(hook, "", HOOK_EVERY)
      ok, e = xpcall(fn, handler)
      sethook()
    end
    local kind
    if ok then kind = "ok"
    elseif rawequal(e, REPORT) then kind = "report"
    elseif rawequal(e, MEMERR) then kind = "memory"
    elseif type(e) == "string" then kind = "string"
    else kind = "other"; e = type(e)
    end
    if kind == "ok" or kind == "report" then e = nil end
    return kind, killed, kill_msg, e, rep_code, rep_msg, rep_line, rep_tb, log_truncated
  end
end
"""


def _no_attributes(_obj: Any, _name: Any, _is_setting: bool) -> Any:
    raise AttributeError("Python attributes are not reachable from scripts")


def _s(b: Any) -> str | None:
    if b is None:
        return None
    if isinstance(b, bytes):
        return b.decode("utf-8", "replace")
    return str(b)


def _err(code: str, message: str) -> tuple[int, bytes, bytes]:
    return (_ERR, code.encode(), message.encode("utf-8", "replace"))


def _json_depth(v: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: the value may be deep)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(v, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            x = list(x.values())
        elif not isinstance(x, list):
            continue
        d += 1
        deepest = max(deepest, d)
        if d > JSON_DEPTH:
            break
        stack.extend((y, d) for y in x)
    return deepest


def _reject_constant(name: str) -> Any:
    raise BadArgument(f"json.decode: {name} is not allowed")


def _finite_float(text: str) -> float:
    f = float(text)
    if not math.isfinite(f):
        raise BadArgument(f"json.decode: {text[:40]} is out of range")
    return f


# status codes of a Python call (see `pycall` in BOOTSTRAP)
_OK, _ERR, _KILL, _OVER, _FAILED = 0, 1, 2, 3, 4
_Answer = tuple[int, Any, Any]


class _HostFailed(Exception):
    """`call` or `log` raised: the run stops and run_script re-raises the cause."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


class _Run:
    """The Python half of one run; its bound methods are the only Python objects Lua holds."""

    def __init__(self, lua: Any, *, context: dict[str, Any], call: CallFn, log: LogFn,
                 clock: Callable[[], float]) -> None:
        self.lua: Any = lua
        self.slot: Any = None
        self.context = context
        self.call_fn = call
        self.log_fn = log
        self.clock_fn = clock
        self.armed = 0
        self.fatal: BaseException | None = None

    def _serve(self, work: Callable[[list[Any]], _Answer]) -> int:
        """Run `work` on the slot's arguments with the memory limit lifted; answer via the slot.

        Only `items()` and item assignment touch Lua here: lupa's item *read* returns garbage
        when called back from inside a coroutine.
        """
        lua, slot = self.lua, self.slot
        lua.set_max_memory(0)
        try:
            try:
                entries = dict(slot.items())
                n = entries.get(b"n")
                if type(n) is not int:
                    return _FAILED
                status, a, b = work([entries.get(i) for i in range(1, n + 1)])
                del entries
            except BadArgument as exc:
                status, a, b = _ERR, b"BadArgument", exc.message.encode("utf-8", "replace")
            except _HostFailed as exc:
                self._fatal(exc.cause)
                status, a, b = _KILL, b"HostError", b"the sandbox host failed"
            except lua54.LuaError:  # lupa refused an operation (e.g. at the C stack limit)
                return _FAILED
            except BaseException as exc:
                self._fatal(exc)
                status, a, b = _KILL, b"HostError", b"the sandbox host failed"
            try:
                slot[b"a"] = a
                slot[b"b"] = b
            except lua54.LuaError:
                return _FAILED
        finally:
            lua.set_max_memory(self.armed)
        if lua.get_memory_used() > self.armed:
            return _OVER
        return status

    def _fatal(self, exc: BaseException) -> None:
        if self.fatal is None:
            self.fatal = exc

    # -- called from Lua -------------------------------------------------------------------

    def clock(self) -> float:
        try:
            return float(self.clock_fn())
        except BaseException as exc:
            self._fatal(exc)
            return math.inf

    def forward(self) -> int:
        return self._serve(self._forward)

    def log(self) -> int:
        return self._serve(self._log)

    def pylocal(self) -> int:
        return self._serve(self._local)

    # -- the work, with the limit lifted ----------------------------------------------------

    def _forward(self, args: list[Any]) -> _Answer:
        fn = args[0].decode()
        try:
            values = [lua_to_python(a) for a in args[1:]]
        except BadArgument as exc:
            return _err("BadArgument", f"{fn}: {exc.message}")
        try:
            ok, value = self.call_fn(fn, values)
        except BaseException as exc:
            raise _HostFailed(exc) from exc
        if ok:
            try:
                return (_OK, python_to_lua(self.lua, value), None)
            except BadArgument as exc:
                return _err("BadArgument", f"{fn}: result has no Lua form: {exc.message}")
        code, message = _error_fields(value)
        if code in UNCATCHABLE:
            return (_KILL, code.encode(), message.encode("utf-8", "replace"))
        return _err(code, message)

    def _log(self, args: list[Any]) -> _Answer:
        level, msg = args
        try:
            self.log_fn(level.decode(), msg.decode("utf-8", "replace"))
        except BaseException as exc:
            raise _HostFailed(exc) from exc
        return (_OK, None, None)

    def _local(self, args: list[Any]) -> _Answer:
        op = args[0]
        if op == b"context":
            return (_OK, python_to_lua(self.lua, self.context), None)
        if op == b"json.encode":
            return self._json_encode(args[1])
        return self._json_decode(args[1])

    def _json_encode(self, v: Any) -> _Answer:
        value = lua_to_python(v, max_depth=JSON_DEPTH, max_entries=JSON_ENTRIES)
        # sorted keys: Lua table order varies from run to run, the output should not
        out = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                         sort_keys=True)
        data = out.encode("utf-8")
        if len(data) > JSON_BYTES:
            return _err("LimitExceeded", f"json.encode: result larger than {JSON_BYTES} bytes")
        return (_OK, data, None)

    def _json_decode(self, s: bytes) -> _Answer:
        if len(s) > JSON_BYTES:
            return _err("LimitExceeded", f"json.decode: input larger than {JSON_BYTES} bytes")
        try:
            text = s.decode("utf-8")
        except UnicodeDecodeError:
            raise BadArgument("json.decode: input is not valid UTF-8") from None
        try:
            value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise BadArgument(f"json.decode: nested deeper than {JSON_DEPTH}") from None
        except ValueError as exc:
            raise BadArgument(f"json.decode: {exc}") from None
        if _json_depth(value) > JSON_DEPTH:
            raise BadArgument(f"json.decode: nested deeper than {JSON_DEPTH}")
        return (_OK, python_to_lua(self.lua, value), None)


def _error_fields(value: Any) -> tuple[str, str]:
    if isinstance(value, dict):
        code, message = value.get("code"), value.get("message")
        if isinstance(code, str) and code:
            return code, message if isinstance(message, str) else ""
    return "ScriptError", f"malformed error answer {value!r:.200}"


def _short_src(chunk: str) -> str:
    return chunk.encode("utf-8")[:_IDSIZE].decode("utf-8", "ignore")


def _line_of(message: str | None, short: str) -> int | None:
    """The line in a Lua "chunk:LINE: msg" message, if it names the script."""
    if message is None:
        return None
    m = re.match(re.escape(short) + r":(\d+):", message)
    return int(m.group(1)) if m else None


def _script_traceback(tb: str | None, short: str) -> str | None:
    """Lua's traceback without the sandbox's own frames."""
    if tb is None:
        return None
    lines = [ln for ln in tb.splitlines() if ln.startswith("\t" + short + ":")]
    if not lines:
        return None
    return "stack traceback:\n" + "\n".join(lines)


def _grants(grants: Collection[str]) -> tuple[bool, bool, bool]:
    def has(cap: str) -> bool:
        return any(g == cap or g.startswith(cap + ":") for g in grants)

    return has("fs.read"), has("fs.write"), "ui.notify" in grants


def run_script(
    source: str,
    *,
    chunk: str,
    args: dict[str, Any],
    context: dict[str, Any],
    limits: Limits,
    grants: Collection[str],
    call: CallFn,
    log: LogFn,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Run `source` once in a fresh sandbox and say how it ended.

    `chunk` names the script in messages and tracebacks ("name:LINE: ..."). `args` is the
    script's global `args`; `context` is what `core.context()` returns (`context["now"]` is
    `core.now()`). `grants` are effective capabilities: `fs.read:*`/`fs.write:*` add `fs.read`/
    `fs.write`, `ui.notify` adds `ui`. `call(name, args)` answers every forwarded `core.*` call
    (and `await` with the handle's spec, `ui.notify`) with `(True, value)` or
    `(False, {"code", "message"})`; `log(level, msg)` receives `print` and `core.log` lines.
    """
    lua = lua54.LuaRuntime(
        max_memory=0,  # a tracking allocator, armed below once the sandbox is built
        encoding=None,
        register_eval=False,
        register_builtins=False,
        unpack_returned_tuples=True,
        attribute_filter=_no_attributes,
    )
    run = _Run(lua, context=context, call=call, log=log, clock=clock)
    try:
        outcome = _execute(run, source, chunk=chunk, args=args, limits=limits, grants=grants)
    finally:
        # Lua holds run's bound methods and run holds Lua: break the cycle so the runtime
        # (and its heap) is freed now rather than never
        run.lua = run.slot = None
        del lua
    if run.fatal is not None:
        raise run.fatal
    return outcome


def _execute(run: _Run, source: str, *, chunk: str, args: dict[str, Any], limits: Limits,
             grants: Collection[str]) -> Outcome:
    lua = run.lua
    lua.execute("python = nil; package.loaded.python = nil")
    check = make_checker(lua)
    prepare = lua.execute(BOOTSTRAP)
    fs_read, fs_write, ui = _grants(grants)
    try:
        cfg = python_to_lua(lua, {
            "max_instructions": limits.max_instructions,
            "deadline": run.clock_fn() + limits.timeout_s,
            "hook_every": HOOK_EVERY,
            "resume_check": RESUME_CHECK,
            "source": source.encode("utf-8", "surrogateescape"),
            "chunk": "=" + chunk,
            "max_depth": MAX_DEPTH,
            "max_entries": MAX_ENTRIES,
            "log_line": LOG_LINE_BYTES,
            "log_lines": LOG_LINES,
            "msg_instructions": f"the script ran more than {limits.max_instructions} instructions",
            "msg_time": f"the script ran longer than {limits.timeout_s:g} s",
            "msg_memory": f"the script used more than {limits.memory_mib} MiB",
            "forwarded": list(FORWARDED),
            "fs_read": fs_read,
            "fs_write": fs_write,
            "ui": ui,
            "pattern_subject": PATTERN_SUBJECT_BYTES,
            "pattern_len": PATTERN_BYTES,
            "pattern_quantifiers": PATTERN_QUANTIFIERS,
            "json_depth": JSON_DEPTH,
            "json_entries": JSON_ENTRIES,
        })
        cfg[b"args"] = python_to_lua(lua, args)
        cfg[b"now"] = python_to_lua(lua, run.context.get("now"))
    except BadArgument as exc:
        return Outcome(ok=False, code="BadArgument", message=f"run arguments: {exc.message}")
    run.slot = lua.table()
    cfg[b"slot"] = run.slot
    py = lua.table()
    for name in ("forward", "log", "pylocal", "clock"):
        py[name.encode()] = getattr(run, name)
    start = prepare(py, check, cfg)
    del py, cfg, check, prepare
    run.armed = lua.get_memory_used() + limits.memory_mib * MIB
    lua.set_max_memory(run.armed)
    try:
        (kind, killed, kill_msg, err, rep_code, rep_msg, rep_line, rep_tb,
         truncated) = start()
    except lua54.LuaMemoryError:
        return Outcome(ok=False, code="MemoryLimit",
                       message=f"the script used more than {limits.memory_mib} MiB")
    finally:
        del start
        lua.set_max_memory(0)
    short = _short_src(chunk)
    truncated = bool(truncated)
    line = rep_line if kind == b"report" else None
    tb = _script_traceback(_s(rep_tb), short) if kind == b"report" else None
    if killed is not None:
        return Outcome(ok=False, code=_s(killed), message=_s(kill_msg), line=line,
                       traceback=tb, log_truncated=truncated)
    if kind == b"ok":
        return Outcome(ok=True, log_truncated=truncated)
    if kind == b"memory":
        return Outcome(ok=False, code="MemoryLimit",
                       message=f"the script used more than {limits.memory_mib} MiB",
                       log_truncated=truncated)
    if kind == b"report":
        code, msg = _s(rep_code), _s(rep_msg) or ""
        if code is not None:
            return Outcome(ok=False, code="ScriptError", message=f"{code}: {msg}",
                           line=line, traceback=tb, log_truncated=truncated, error_code=code)
        return Outcome(ok=False, code="ScriptError", message=msg,
                       line=_line_of(msg, short) or line, traceback=tb, log_truncated=truncated)
    msg = _s(err) or ""
    if kind == b"other":
        msg = f"error object of type {msg}"
    return Outcome(ok=False, code="ScriptError", message=msg, line=_line_of(msg, short),
                   log_truncated=truncated)
