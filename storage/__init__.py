"""Storage backends behind narrow interfaces (see storage.base)."""
