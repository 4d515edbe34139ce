"""The sans-I/O LAN sync protocol (spec 03 §5–§6): wire messages and per-link state machines.

Everything here is pure and synchronous: the runtime in `actors/` owns sockets, tasks and
timers, feeds received frames in and writes the returned messages out.
"""
