"""ddfs: native package."""
