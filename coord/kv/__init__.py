"""The replicated key-value store.

Commands and results (`commands`, `results`), client sessions (`sessions` in
the state machine, `client` on the client), the sans-IO state machine
(`machine`) and its storage (`store`: Protocols + in-memory twin;
`lmdb_state`: LMDB).  The RPC edge built on them is `service`, `server` and
`remote`.  docs/storage.md describes the durability argument.
"""
