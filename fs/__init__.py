"""ddfs: fs package."""
