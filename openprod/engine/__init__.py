"""The engine: state projection, conflicts, overlays, undo, CRDT text, and the sync facade."""
