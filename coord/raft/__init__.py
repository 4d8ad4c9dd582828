"""Raft consensus: a sans-IO core (`core`), storage interfaces (`storage`) with
LMDB and in-memory implementations, and a trio driver."""
