"""Core value types: ids, clocks, identity, the canonical codec, operations and bundles."""
