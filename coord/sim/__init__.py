"""Deterministic simulation: a seeded lossy network (`network`) reusable by any
protocol core, and the Raft cluster simulator with its invariant checker (`raft`)."""
