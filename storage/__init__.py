"""Storage backends behind narrow interfaces (storage.interfaces, composed in storage.base)."""
