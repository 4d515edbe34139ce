"""`GET /workspace/current` names the next undo and redo step (spec 05 J13: the buttons'
tooltips read "Undo: set Cue 42 · time"), canonically and while staging."""

from __future__ import annotations

from tests.api.conftest import Api


async def test_current_names_the_undo_and_redo_steps(api: Api) -> None:
    cur = await api.ok("GET", "/workspace/current")
    assert (cur["undo_label"], cur["redo_label"]) == (None, None)
    tid = (await api.ok("POST", "/tables/create", {
        "label": "Cues", "fields": [{"label": "Cue"}, {"label": "Time"}]}))["table"]
    rid = (await api.ok("POST", "/records/create", {"table": tid,
                                                    "values": {"Cue": "Cue 42"}}))["id"]
    await api.ok("POST", "/records/update", {"id": rid, "values": {"Time": "10:30"}})
    cur = await api.ok("GET", "/workspace/current")
    assert (cur["undo_label"], cur["redo_label"]) == ("set Cue 42 · Time", None)
    await api.ok("POST", "/undo")
    cur = await api.ok("GET", "/workspace/current")
    assert (cur["undo_label"], cur["redo_label"]) == ("add Cue 42 to Cues", "set Cue 42 · Time")
    # while staging, the steps are the overlay's
    await api.ok("POST", "/overlays/create", {"name": "Act 2"})
    await api.ok("POST", "/records/update", {"id": rid, "values": {"Time": "11:00"}})
    cur = await api.ok("GET", "/workspace/current")
    assert cur["undo_label"] == "set Cue 42 · Time"
    assert cur["active_overlay"]["undo_label"] == "set Cue 42 · Time"
