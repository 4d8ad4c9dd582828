"""ddfs: tools package."""
