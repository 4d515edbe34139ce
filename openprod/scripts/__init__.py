"""Lua scripts (spec 04 §7).

The sandbox side: `sandbox` runs one script in a fresh Lua runtime, `luavalues` converts values
across the Lua boundary, `frames` is the pipe framing, `host` is the child process the
ScriptRunner drives. The engine side (`session`, `triggers`, `catalog`) answers what scripts ask.
"""
