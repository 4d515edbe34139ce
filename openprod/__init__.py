"""openprod: the pure domain of a local-first collaborative workspace.

Nothing in this package awaits, opens sockets or starts threads: storage calls block and the
runtime (`actors/`) runs them in worker threads.
"""
