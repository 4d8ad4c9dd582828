"""ddfs: coord package."""
