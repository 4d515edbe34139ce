"""The Lua sandbox in process (spec 04 §7.2, §7.3, §7.6; §8 scenarios 18, 20–28), its value
bridge and the host pipe framing.

`run_script` is driven with a fake `call`, so every hostile scenario is checked without a host
process; the process-level ones (wall-clock kill) are in tests/process/test_script_host.py.
Instruction budgets are small so that runaway loops end in milliseconds.
"""

from __future__ import annotations

import gc
import io
import math
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lupa import lua54  # type: ignore[import-untyped]

from openprod.scripts.frames import (
    HEADER,
    MAX_FRAME,
    FrameError,
    FrameReader,
    encode_frame,
    read_frame,
    write_frame,
)
from openprod.scripts.luavalues import (
    BadArgument,
    lua_to_python,
    make_checker,
    python_to_lua,
)
from openprod.scripts.sandbox import Limits, Outcome, run_script

FAST = Limits(max_instructions=2_000_000)
MiB = 1024 * 1024


class Fake:
    """A stand-in for the runner: records calls and log lines, answers from `answers`."""

    def __init__(self, answers: dict[str, Callable[[list[Any]], tuple[bool, Any]]] | None = None
                 ) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, list[Any]]] = []
        self.logs: list[tuple[str, str]] = []

    def call(self, name: str, args: list[Any]) -> tuple[bool, Any]:
        self.calls.append((name, args))
        if name in self.answers:
            return self.answers[name](args)
        if name == "create_entity":
            return True, f"id-{len(self.calls)}"
        return True, None

    def log(self, level: str, msg: str) -> None:
        self.logs.append((level, msg))

    @property
    def printed(self) -> list[str]:
        return [m for _, m in self.logs]


def run(source: str, fake: Fake | None = None, *, limits: Limits = FAST,
        grants: frozenset[str] = frozenset(), args: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        clock: Callable[[], float] | None = None) -> tuple[Outcome, Fake]:
    fake = fake or Fake()
    extra = {} if clock is None else {"clock": clock}
    outcome = run_script(source, chunk="<script>", args=args or {},
                         context=context if context is not None else {"now": 1_700_000_000_000},
                         limits=limits, grants=grants, call=fake.call, log=fake.log, **extra)
    return outcome, fake


def not_found(_args: list[Any]) -> tuple[bool, Any]:
    return False, {"code": "NotFound", "message": "no such entity"}


# --- the plain path -----------------------------------------------------------------------------

def test_values_cross_both_ways() -> None:
    fake = Fake({"get_record": lambda a: (True, {"name": "Ann", "tags": ["a", "b"], "n": 3,
                                                   "f": 2.5, "ok": True, "none": None})})
    outcome, fake = run(
        """
        local r = core.get_record("e1", "m.People")
        print(r.name, r.tags[2], #r.tags, r.n, math.type(r.n), r.f, r.ok, r.none)
        core.set_field("e1", "m.People", "x", {1, 2.5, "é", true, {k = "v"}}, nil)
        core.create_entity(nil, {})
        print(args.count, args.who.name, core.now(), core.context().run_id)
        """,
        fake, args={"count": 2, "who": {"name": "Bo"}},
        context={"now": 42, "run_id": "r-1"},
    )
    assert outcome == Outcome(ok=True)
    assert fake.printed == ["Ann\tb\t2\t3\tinteger\t2.5\ttrue\tnil", "2\tBo\t42\tr-1"]
    assert fake.calls[1] == ("set_field", ["e1", "m.People", "x",
                                           [1, 2.5, "é", True, {"k": "v"}], None])
    assert fake.calls[2] == ("create_entity", [None, {}])


def test_environment_is_the_whitelist() -> None:
    outcome, fake = run(
        """
        local names = {}
        for k in pairs(_G) do names[#names + 1] = k end
        table.sort(names)
        print(table.concat(names, " "))
        print(_G == _ENV, _VERSION, getmetatable(""), string.dump, ("x").dump)
        """
    )
    assert outcome.ok
    assert fake.printed[0].split() == sorted([
        "assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring", "type",
        "rawequal", "rawget", "rawset", "rawlen", "getmetatable", "setmetatable", "pcall",
        "xpcall", "print", "_VERSION", "_G", "string", "table", "math", "utf8", "coroutine",
        "core", "json", "args",
    ])
    assert fake.printed[1] == "true\tLua 5.4\tfalse\tnil\tnil"


def test_grants_add_fs_and_ui() -> None:
    src = "print(fs ~= nil, fs ~= nil and fs.read ~= nil, fs ~= nil and fs.write ~= nil, ui ~= nil)"
    assert run(src)[1].printed == ["false\tfalse\tfalse\tfalse"]
    assert run(src, grants=frozenset({"fs.read:exports/*.csv"}))[1].printed == [
        "true\ttrue\tfalse\tfalse"]
    assert run(src, grants=frozenset({"fs.write:out/**", "ui.notify"}))[1].printed == [
        "true\tfalse\ttrue\ttrue"]


def test_string_functions_still_work() -> None:
    outcome, fake = run(
        """
        local s = "a,b,,c"
        local parts = {}
        for p in s:gmatch("[^,]*") do parts[#parts + 1] = "<" .. p .. ">" end
        print(s:find(","), s:find(".", 1, true), s:match("(%a),(%a)"), (s:gsub(",", ";")))
        print(("-"):rep(20):find(("%-"):rep(20)), ("x"):upper(), #parts)
        """
    )
    assert outcome.ok, outcome
    # (Lua keeps only the first result of a call that is not last in a list)
    assert fake.printed == ["2\tnil\ta\ta;b;;c", "1\tX\t4"]


# --- scenario 18: errors and lines ---------------------------------------------------------------

def test_error_after_creates_fails_with_its_line() -> None:
    outcome, fake = run(
        """
        for i = 1, 10 do
          core.create_entity("m.Calls", {n = i})
        end
        error("boom")
        """
    )
    assert [c[0] for c in fake.calls] == ["create_entity"] * 10
    assert outcome.ok is False
    assert outcome.code == "ScriptError"
    assert outcome.message == "<script>:5: boom"
    assert outcome.line == 5
    assert outcome.traceback is not None and "<script>:5:" in outcome.traceback
    assert "bootstrap" not in outcome.traceback and "[C]" not in outcome.traceback


def test_pcall_around_not_found_succeeds() -> None:
    outcome, fake = run(
        """
        local ok, e = pcall(core.get_field, "missing", "m.People", "name")
        print(ok, e.code, e.message, tostring(e), getmetatable(e))
        """,
        Fake({"get_field": not_found}),
    )
    assert outcome == Outcome(ok=True)
    assert fake.printed == ["false\tNotFound\tno such entity\tNotFound: no such entity\tfalse"]


def test_uncaught_core_error_reports_the_call_site() -> None:
    outcome, _ = run(
        """
        local function lookup(id)
          local name = core.get_field(id, "m.People", "name")
          return name
        end
        local x = 1
        lookup("missing")
        """,
        Fake({"get_field": not_found}),
    )
    assert outcome.code == "ScriptError"
    assert outcome.error_code == "NotFound"
    assert outcome.message == "NotFound: no such entity"
    assert outcome.line == 3


def test_compile_error_has_its_line() -> None:
    outcome, _ = run("local x = 1\nlocal y = = 2\n")
    assert outcome.code == "ScriptError"
    assert outcome.line == 2
    assert outcome.message is not None and outcome.message.startswith("<script>:2:")


def test_bytecode_is_refused() -> None:
    outcome, _ = run("\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00\x00")
    assert outcome.code == "ScriptError"
    assert outcome.message is not None and "binary chunk" in outcome.message


# --- scenario 21: instruction limit ----------------------------------------------------------

LOOPS = {
    "plain": "while true do end",
    "pcall loop": "while true do pcall(function() while true do end end) end",
    "xpcall loop": """
        local function spin() while true do end end
        while true do xpcall(spin, function() while true do end end) end
    """,
    "wrap": "coroutine.wrap(function() while true do end end)()",
    "resume loop": """
        while true do
          coroutine.resume(coroutine.create(function() while true do end end))
        end
    """,
    "pcall of wrap": """
        while true do pcall(coroutine.wrap(function() while true do end end)) end
    """,
    "__close": """
        do
          local guard <close> = setmetatable({}, {__close = function() while true do end end})
          while true do end
        end
    """,
    "__tostring via print": """
        print(setmetatable({}, {__tostring = function() while true do end end}))
    """,
    "close a coroutine after it died": """
        local co = coroutine.create(function()
          local x <close> = setmetatable({}, {__close = function() while true do end end})
          while true do end
        end)
        do
          local guard <close> = setmetatable({}, {__close = function() coroutine.close(co) end})
          coroutine.resume(co)
        end
    """,
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_runaway_loops_hit_the_instruction_limit(name: str) -> None:
    outcome, _ = run(LOOPS[name])
    assert outcome.code == "InstructionLimit", outcome
    assert outcome.ok is False


def test_deadline_is_checked_in_the_hook() -> None:
    ticks = iter(range(0, 10_000, 2))
    outcome, _ = run("while true do pcall(function() while true do end end) end",
                     limits=Limits(timeout_s=10, max_instructions=1_000_000_000),
                     clock=lambda: float(next(ticks)))
    assert outcome.code == "TimeLimit"
    assert outcome.message == "the script ran longer than 10 s"


def test_short_coroutines_cannot_hide_from_the_deadline() -> None:
    # every thread stays under one hook period, so no hook ever fires: the resumes check time
    ticks = iter(range(0, 10_000, 1))
    outcome, _ = run(
        """
        local function node(d)
          if d == 0 then for i = 1, 3000 do end return end
          for i = 1, 100 do coroutine.wrap(node)(d - 1) end
        end
        node(15)
        """,
        limits=Limits(timeout_s=50, max_instructions=1_000_000_000),
        clock=lambda: float(next(ticks)),
    )
    assert outcome.code == "TimeLimit"


def test_message_handlers_never_run_inside_the_hook() -> None:
    # a C stack overflow when calling the hook runs the message handler with hooks off; at some
    # depth in this range it happens, and the script's looping handler must not run there
    for depth in range(185, 205):
        outcome, _ = run(
            f"""
            local depth = 0
            local mt = {{}}
            mt.__index = function(t, k)
              depth = depth + 1
              if depth < {depth} then return t.x end
              xpcall(function() while true do end end, function(e) while true do end end)
              return 1
            end
            local _ = setmetatable({{}}, mt).x
            """
        )
        assert outcome.code in (None, "InstructionLimit", "ScriptError"), (depth, outcome)


def test_dead_coroutines_are_not_closed_again() -> None:
    for depth in range(185, 205):
        outcome, _ = run(
            f"""
            local co = coroutine.create(function()
              local x <close> = setmetatable({{}}, {{__close = function() while true do end end}})
              local depth = 0
              local mt = {{}}
              mt.__index = function(t, k)
                depth = depth + 1
                if depth < {depth} then return t.x end
                while true do end
              end
              local _ = setmetatable({{}}, mt).x
            end)
            pcall(coroutine.resume, co)
            coroutine.close(co)
            """
        )
        assert outcome.code in (None, "InstructionLimit", "ScriptError"), (depth, outcome)


# --- scenario 22: memory limit ------------------------------------------------------------------

HOGS = {
    "doubling": 'local s = "x" while true do s = s .. s end',
    "table growth": "local t = {} local i = 0 while true do i = i + 1; t[i] = {i} end",
    "rep": 'local s = string.rep("x", 2^30)',
    "rep under pcall": 'while true do pcall(string.rep, "x", 2^30) end',
    "doubling under pcall": """
        local ok = pcall(function() local s = "x" while true do s = s .. s end end)
        print("survived", ok)
    """,
    "in a coroutine": """
        local function grow() local s = "x" while true do s = s .. s end end
        coroutine.resume(coroutine.create(grow))
        print("survived")
    """,
    "json.decode result": """
        local s = "[" .. string.rep("[1,2,3,4,5,6,7,8],", 20000) .. "1]"
        local ok, t = pcall(json.decode, s)
        print("survived", ok)
    """,
}


@pytest.mark.parametrize("name", sorted(HOGS))
def test_memory_hogs_hit_the_memory_limit(name: str) -> None:
    limits = Limits(memory_mib=1, max_instructions=50_000_000)
    outcome, fake = run(HOGS[name], limits=limits)
    assert outcome.code == "MemoryLimit", outcome
    assert fake.printed == []


def test_a_script_may_use_its_heap() -> None:
    outcome, fake = run('local s = string.rep("x", 8 * 1024 * 1024) print(#s)',
                        limits=Limits(memory_mib=16))
    assert outcome.ok, outcome
    assert fake.printed == [str(8 * MiB)]


# --- scenario 23: what is not there -------------------------------------------------------------

ABSENT = [
    'os.execute("true")', 'io.open("/etc/passwd")', 'load("return 1")', 'loadstring("x")',
    'dofile("/etc/passwd")', 'require("os")', "debug.getinfo(1)", "string.dump(print)",
    '("").dump(print)', "local x = package.loaded", "collectgarbage()",
    'python.eval("1")', "loadfile('/etc/passwd')", "local x = debug.sethook",
]


@pytest.mark.parametrize("expr", ABSENT)
def test_dangerous_globals_are_absent(expr: str) -> None:
    outcome, _ = run(expr)
    assert outcome.code == "ScriptError", outcome
    assert outcome.message is not None and "nil value" in outcome.message


# --- scenario 24: metatables and closures -------------------------------------------------------

def test_string_metatable_is_locked() -> None:
    outcome, _ = run('getmetatable("").__index = {}')
    assert outcome.code == "ScriptError"
    assert outcome.message is not None and "boolean" in outcome.message


def test_gc_metamethods_are_refused() -> None:
    outcome, _ = run("setmetatable({}, {__gc = function() while true do end end})")
    assert outcome.code == "ScriptError"
    assert outcome.message is not None and "__gc" in outcome.message
    assert outcome.line == 1


def test_globals_are_really_gone_and_closures_opaque() -> None:
    outcome, fake = run(
        """
        print(rawget(_G, "os"), rawget(_G, "debug"), rawget(_G, "python"), rawget(_G, "load"))
        print(pcall(function() return core.get_field.upvalues end))
        print(getmetatable(core.sleep(1)), getmetatable(json))
        """
    )
    assert outcome.ok
    assert fake.printed[0] == "nil\tnil\tnil\tnil"
    assert fake.printed[1].startswith("false\t<script>:3: attempt to index a function value")
    assert fake.printed[2] == "false\tnil"


def test_indexing_a_core_function_fails() -> None:
    outcome, _ = run("local x = core.get_field.x")
    assert outcome.code == "ScriptError"
    assert outcome.message is not None and "function value" in outcome.message


# --- scenario 25: pattern limits ----------------------------------------------------------------

@pytest.mark.parametrize("expr", [
    '("a"):rep(3000):find(("a*"):rep(20) .. "b")',
    'string.match("aaa", ("a?"):rep(9))',
    'for x in ("aaa"):gmatch(("a-"):rep(9)) do end',
    'string.gsub("aaa", ("a+"):rep(9), "")',
    'string.find("x", ("x"):rep(257))',
    'string.find(("x"):rep(1024 * 1024 + 1), "x")',
])
def test_pattern_bombs_are_refused_at_once(expr: str) -> None:
    outcome, fake = run(expr)
    assert outcome.code == "ScriptError"
    assert outcome.error_code == "LimitExceeded", outcome
    assert fake.calls == []


def test_plain_find_and_escapes_pass() -> None:
    outcome, fake = run(
        """
        print(("a"):rep(3000):find(("a*"):rep(20), 1, true))
        print(("x"):find(("%-"):rep(20)), ("ab"):find(("a*"):rep(8) .. "b"))
        local ok, e = pcall(string.find, "x", ("x?"):rep(9))
        print(ok, e.code)
        """
    )
    assert outcome.ok, outcome
    assert fake.printed == ["nil", "nil\t1\t2", "false\tLimitExceeded"]


# --- scenario 26: foreign error objects ---------------------------------------------------------

@pytest.mark.parametrize(("expr", "message"), [
    ("error(setmetatable({}, {__tostring = function() while true do end end}))",
     "error object of type table"),
    ("error(setmetatable({}, {__index = function() while true do end end, "
     "__eq = function() while true do end end, __name = 'x'}))", "error object of type table"),
    ("error(coroutine.create(print))", "error object of type thread"),
    ("error(nil)", "error object of type nil"),
    ("error(42)", "42"),
])
def test_foreign_error_objects_are_not_touched(expr: str, message: str) -> None:
    outcome, _ = run(expr)
    assert outcome.code == "ScriptError"
    assert outcome.message == message
    assert outcome.line == 1


# --- scenario 27: arguments ---------------------------------------------------------------------

@pytest.mark.parametrize(("setup", "reason"), [
    ("local t = {} t.self = t", "contains itself"),
    ("local t = setmetatable({}, {})", "metatable"),
    ("local t = setmetatable({}, {__metatable = false})", "metatable"),
    ("local t = {f = print}", "function"),
    ("local t = {co = coroutine.create(print)}", "thread"),
    ("local t = {1, 2, x = 3}", "mix"),
    ("local t = {1, nil, 3}", "holes"),
    ("local t = {[1.5] = 1}", "keys"),
    ("local t = {[true] = 1}", "keys"),
    ("local t = {x = 0/0}", "NaN"),
    ("local t = {x = 1/0}", "NaN"),
    ("local t = {} for i = 1, 100001 do t[i] = i end", "entries"),
    ("local t = {} local c = t for i = 1, 40 do c.x = {} c = c.x end", "deeper"),
    ('local t = {s = "\\xff\\xfe"}', "UTF-8"),
    ('local t = {["\\xff"] = 1}', "UTF-8"),
])
def test_bad_arguments_are_refused(setup: str, reason: str) -> None:
    outcome, fake = run(
        f"""
        {setup}
        local ok, e = pcall(core.create_entity, "m.T", t)
        print(ok, e.code)
        core.create_entity("m.T", t)
        """,
        limits=Limits(max_instructions=20_000_000),
    )
    assert fake.printed == ["false\tBadArgument"]
    assert fake.calls == []
    assert outcome.code == "ScriptError"
    assert outcome.error_code == "BadArgument"
    assert outcome.message is not None and reason in outcome.message, outcome.message
    assert outcome.line == 5


def test_shared_subtables_are_not_cycles() -> None:
    outcome, fake = run('local s = {1} core.create_entity("m.T", {a = s, b = s, c = {s, s}})')
    assert outcome.ok, outcome
    assert fake.calls == [("create_entity", ["m.T", {"a": [1], "b": [1], "c": [[1], [1]]}])]


# --- scenario 28: yield, logs -------------------------------------------------------------------

def test_top_level_yield_is_a_script_error() -> None:
    outcome, _ = run("coroutine.yield(1)")
    assert outcome.code == "ScriptError"
    assert outcome.message is not None and "outside a coroutine" in outcome.message


def test_logs_are_truncated_silently() -> None:
    outcome, fake = run(
        """
        for i = 1, 100000 do print("line", i) end
        core.log("warn", "after")
        """,
        limits=Limits(),
    )
    assert outcome == Outcome(ok=True, log_truncated=True)
    assert len(fake.logs) == 1000
    assert fake.logs[0] == ("info", "line\t1")
    assert fake.logs[-1] == ("info", "line\t1000")


def test_log_lines_are_capped_and_levels_checked() -> None:
    outcome, fake = run(
        """
        core.log("debug", string.rep("é", 3000))
        core.log("error", 12)
        local ok, e = pcall(core.log, "loud", "x")
        print(ok, e.code)
        local ok2, e2 = pcall(core.log, "info", {})
        print(ok2, e2.code)
        """
    )
    assert outcome == Outcome(ok=True)
    level, line = fake.logs[0]
    assert level == "debug"
    assert len(line.encode()) <= 4096 and line.startswith("é" * 2047)
    assert fake.logs[1] == ("error", "12")
    assert fake.printed[2:] == ["false\tBadArgument", "false\tBadArgument"]


# --- awaitables, ui -----------------------------------------------------------------------------

def test_await_forwards_the_handle_spec() -> None:
    fake = Fake({"await": lambda a: (True, "file body" if a[0]["kind"] == "fs.read" else None)})
    grants = frozenset({"fs.read:in/*", "fs.write:out/*", "ui.notify"})
    outcome, fake = run(
        """
        local h = core.sleep(100.7)
        print(tostring(h), core.await(h))
        print(core.await(fs.read("in/a.csv")))
        core.await(fs.write("out/b.csv", "x,y"))
        ui.notify("done", "info")
        """,
        fake, grants=grants,
    )
    assert outcome.ok, outcome
    assert fake.calls == [
        ("await", [{"kind": "sleep", "ms": 100}]),
        ("await", [{"kind": "fs.read", "path": "in/a.csv"}]),
        ("await", [{"kind": "fs.write", "path": "out/b.csv", "data": "x,y"}]),
        ("ui.notify", ["done", "info"]),
    ]
    assert fake.printed == ["awaitable\tnil", "file body"]


@pytest.mark.parametrize("expr", [
    "core.await({})", "core.await(nil)", "core.await(setmetatable({}, {}))",
    "local h = core.sleep(1) core.await(h) core.await(h)",
    "core.sleep(-1)", "core.sleep(0/0)", "core.sleep('soon')",
])
def test_await_refuses_what_is_not_a_fresh_handle(expr: str) -> None:
    outcome, fake = run(expr)
    assert outcome.code == "ScriptError"
    assert outcome.error_code == "BadArgument"
    assert len(fake.calls) <= 1


def test_uncatchable_answers_end_the_run() -> None:
    fake = Fake({"await": lambda a: (False, {"code": "Cancelled", "message": "cancelled"})})
    outcome, fake = run(
        """
        for i = 1, 3 do pcall(core.await, core.sleep(60000)) end
        print("still here")
        """,
        fake,
    )
    assert outcome.code == "Cancelled"
    assert len(fake.calls) == 1
    assert fake.printed == []


def test_a_failing_callback_propagates() -> None:
    def broken(_args: list[Any]) -> tuple[bool, Any]:
        raise BrokenPipeError("runner gone")

    with pytest.raises(BrokenPipeError):
        run("while true do pcall(core.exists, 'x') end", Fake({"exists": broken}))


# --- json -----------------------------------------------------------------------------------

def test_json_round_trip() -> None:
    outcome, fake = run(
        """
        local v = {name = "Zoë", list = {1, 2.5, true, "x"}, nested = {a = {b = {}}}}
        local s = json.encode(v)
        print(s)
        local back = json.decode(s)
        print(back.name, back.list[2], back.list[3], back.nested.a.b ~= nil)
        local t = json.decode('{"a": null, "b": [1, null, 3]}')
        print(t.a, t.b[1], t.b[2], t.b[3])
        """
    )
    assert outcome.ok, outcome
    assert fake.printed == [
        '{"list":[1,2.5,true,"x"],"name":"Zoë","nested":{"a":{"b":{}}}}',
        "Zoë\t2.5\ttrue\ttrue",
        "nil\t1\tnil\t3",
    ]
    assert fake.calls == []


@pytest.mark.parametrize("expr", [
    "json.decode('{')", "json.decode('[NaN]')", "json.decode(42)",
    "json.decode(string.rep('[', 65) .. string.rep(']', 65))",
    "json.decode('[1e999999999999999999999999]')",
    "json.decode('[123456789012345678901234567890]')",
    "json.encode({f = print})", "json.encode({1, nil, 3})",
])
def test_json_refuses_bad_input(expr: str) -> None:
    outcome, _ = run(expr)
    assert outcome.error_code == "BadArgument", outcome


# --- limits, lifetime ---------------------------------------------------------------------------

def test_limits_have_defaults_and_caps() -> None:
    assert Limits() == Limits(timeout_s=30.0, memory_mib=16, max_instructions=200_000_000)
    assert Limits.from_wire({"timeout_s": 120}).timeout_s == 120
    assert Limits.from_wire({"max_instructions": 1e9}).max_instructions == 10**9  # TOML's 1e9
    for bad in ({"timeout_s": 121}, {"memory_mib": 257}, {"max_instructions": 10**9 + 1},
                {"memory_mib": 0}, {"timeout_s": True}, {"tick": 1}, {"memory_mib": 1.5},
                {"timeout_s": "30"}):
        with pytest.raises((ValueError, TypeError)):
            Limits.from_wire(bad)
    assert Limits.from_wire(Limits().to_wire()) == Limits()


def test_bad_run_arguments_are_reported() -> None:
    outcome, _ = run("print(1)", args={"x": object()})
    assert outcome.code == "BadArgument"


def test_each_run_drops_its_runtime() -> None:
    def runtimes() -> int:
        return sum(type(o) is lua54.LuaRuntime for o in gc.get_objects())

    before = runtimes()
    for _ in range(5):
        run("local t = {} for i = 1, 1000 do t[i] = {i} end core.exists('x')")
    assert runtimes() == before


# --- luavalues on its own -----------------------------------------------------------------------

scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
# no None inside lists: a nil there is a hole on the Lua side (refused on the way back)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, min_size=1, max_size=4)
    | st.dictionaries(st.text(max_size=6), st.none() | inner, max_size=4),
    max_leaves=20,
)


def _after_lua(v: Any) -> Any:
    """What survives a trip through Lua: nil map values vanish, -0.0 becomes 0.0."""
    if isinstance(v, dict):
        return {k: _after_lua(x) for k, x in v.items() if x is not None}
    if isinstance(v, list):
        return [_after_lua(x) for x in v]
    if isinstance(v, float) and v == 0.0:
        return 0.0
    return v


@given(json_like)
def test_values_round_trip_through_lua(value: Any) -> None:
    lua = lua54.LuaRuntime(encoding=None)
    check = make_checker(lua)
    lua_value = python_to_lua(lua, value)
    assert check(lua_value, 32, 100_000) is None
    back = lua_to_python(lua_value)
    assert back == _after_lua(value)
    assert type(back) is type(_after_lua(value))


def test_negative_zero_becomes_zero() -> None:
    back = lua_to_python(-0.0)
    assert back == 0.0 and math.copysign(1.0, back) == 1.0


def test_python_to_lua_refuses_what_lua_cannot_hold() -> None:
    lua = lua54.LuaRuntime(encoding=None)
    for bad in (2**63, {1: "x"}, object(), "\ud800"):
        with pytest.raises(BadArgument):
            python_to_lua(lua, bad)


# --- frames (the host pipe) ---------------------------------------------------------------------

frame_maps = st.dictionaries(
    st.text(max_size=8),
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | st.lists(st.integers(-(2**63), 2**63), max_size=5),
    max_size=6,
)


@given(st.lists(frame_maps, min_size=1, max_size=4), st.data())
def test_frames_survive_any_split(msgs: list[dict[str, Any]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    reader = FrameReader()
    got: list[dict[str, Any]] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        got.extend(reader.feed(stream[a:b]))
    assert got == msgs
    assert reader.pending == 0
    buf = io.BytesIO(stream)
    assert [read_frame(buf) for _ in msgs] == msgs
    assert read_frame(buf) is None


@pytest.mark.parametrize("stream", [
    HEADER.pack(MAX_FRAME + 1),
    HEADER.pack(0),
    HEADER.pack(3) + b"\xff\xff\xff",
    HEADER.pack(3) + cbor2.dumps([1, 2]),
    HEADER.pack(2) + b"\xa1\x01",  # a map with an integer key
])
def test_frame_reader_refuses_garbage(stream: bytes) -> None:
    reader = FrameReader()
    with pytest.raises(FrameError):
        reader.feed(stream)
    with pytest.raises(FrameError):
        reader.feed(b"")  # a failed stream stays failed
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(stream))


def test_frames_refuse_what_they_cannot_carry() -> None:
    with pytest.raises(FrameError):
        encode_frame({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(FrameError):
        encode_frame({"x": math.nan})
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(encode_frame({"t": "ping"})[:-1]))  # truncated body
    with pytest.raises(FrameError):
        read_frame(io.BytesIO(b"\x00\x00"))  # truncated header


def test_write_frame_writes_it_whole() -> None:
    class Trickle(io.RawIOBase):
        """A pipe that takes at most 3 bytes per write."""

        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            chunk = bytes(b[:3])
            self.data += chunk
            return len(chunk)

    out = Trickle()
    write_frame(out, {"t": "log", "msg": "x" * 50})  # type: ignore[arg-type]
    assert FrameReader().feed(bytes(out.data)) == [{"t": "log", "msg": "x" * 50}]
