"""State persistence and commitment: SQLite store, incremental Merkle tree, staged overlays."""
