"""ddfs: dsm package."""
