"""The replicated key-value store: commands and results (`commands`, `results`),
client sessions (`sessions`, `client`), the sans-IO state machine (`machine`)
and its storage (`store` Protocols + in-memory twin, `lmdb_state`)."""
