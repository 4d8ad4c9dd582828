"""The file-system metadata service: a second state machine on the metadata Raft log.

Modules: `protocol` (the fs.* / meta.* RPC messages), `commands` and
`results` (the FS commands, queries and results with their persisted
msgpack form), `state` (typed records over the LMDB tables), `perms`
(POSIX permission rules), `namespace`, `attrs` and `chunks` (the
operations, sans-IO over a write view), `machine` (the extension that plugs
into coord.kv's state machine), `liveness` (the leader's soft state of chunk
servers and placement), `service` and `server` (the RPC edge and `ddfs
meta`), `client` (MetaClient).  docs/fs-meta.md describes them.
"""
