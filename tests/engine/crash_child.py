"""The child program of the crash test (tests/engine/test_crash.py): append until killed.

Usage: python -m tests.engine.crash_child <workspace dir> <identity seed hex> <rng seed> [max]

Opens the workspace (created beforehand by the parent, with a table labelled "T") under the
given identity and appends bundles in a loop. It prints, flushing each line:
  "start"          once its imports are done, just before Workspace.open (which runs catch_up,
                   so a kill soon after lands on the recovery path);
  "ready <head>"   once the workspace is open;
  "ok <seq>"       after each command has returned: every op up to seq is durable.
It exits by itself after `max` commands (default 1000), in case its parent went away.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

TABLE = "T"
FIELDS = [
    {"label": "name", "name": "name", "type": "text"},
    {"label": "n", "name": "n", "type": "integer"},
    {"label": "x", "name": "x", "type": "float"},
    {"label": "done", "name": "done", "type": "boolean"},
    {"label": "a", "name": "a", "type": "text"},
    {"label": "b", "name": "b", "type": "text"},
    {"label": "body", "name": "body", "type": "text"},
]


def row(rng: random.Random) -> dict[str, object]:
    """A record with several fields; now and then a large text value (a longer transaction)."""
    vals: dict[str, object] = {
        "name": f"r{rng.randrange(10**9)}",
        "n": rng.randrange(-(10**6), 10**6),
        "x": rng.random(),
        "done": rng.random() < 0.5,
        "a": "a" * rng.randrange(1, 40),
        "b": rng.choice(["", "b", "bb", "ünïcødé"]),
    }
    if rng.random() < 0.08:
        vals["body"] = "L" * rng.randrange(100_000, 600_000)
    return vals


def main(argv: list[str]) -> int:
    from openprod.core.identity import Identity
    from openprod.engine.workspace import Workspace

    path, seed_hex, rng_seed = argv[0], argv[1], int(argv[2])
    max_cmds = int(argv[3]) if len(argv) > 3 else 1000
    rng = random.Random(rng_seed)
    out = sys.stdout
    out.write("start\n")
    out.flush()
    ws = Workspace.open(Path(path), Identity.from_seed(bytes.fromhex(seed_hex)))
    out.write(f"ready {ws.storage.head_seq()}\n")
    out.flush()
    mine: list[bytes] = []
    for _ in range(max_cmds):
        r = rng.random()
        if r < 0.35 or not mine:
            res = ws.create_record(TABLE, row(rng))
            mine.extend(res.created)
        elif r < 0.65:
            # several bundles per transaction, and several transactions per command
            rows = [row(rng) for _ in range(rng.randrange(2, 12))]
            res = ws.create_records(TABLE, rows, batch=rng.randrange(1, 6))
            mine.extend(res.created)
        elif r < 0.95:
            e = rng.choice(mine)
            vals = {k: v for k, v in row(rng).items() if rng.random() < 0.6} or {"n": 0}
            if rng.random() < 0.2:
                vals["a"] = None
            res = ws.update_record(e, vals, table=TABLE)
        else:
            e = mine.pop(rng.randrange(len(mine)))
            res = ws.delete_record(e, TABLE)
        out.write(f"ok {res.seq}\n")
        out.flush()
    ws.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
