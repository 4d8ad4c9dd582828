"""The chunk server (`ddfs chunk`): GFS-style chunk replicas on local disk.

Modules:
  protocol  the `chunk.*` RPC messages, replies and error codes (the contract)
  blocks    pure block arithmetic: touched blocks, read-modify-write images, CRCs
  staging   the bounded, expiring buffer of pushed data (sans-IO)
  ordering  per-chunk admission: fencing, versions, serial order (sans-IO)
  store     the ChunkStore interface, its errors and its in-memory twin
  disk      DiskChunkStore: chunk files plus an LMDB index, crash recovery
  pipeline  forwarding pushes along a chain, fanning applies out to secondaries
  heartbeat reports to the metadata leader (HeartbeatSink, Reporter) and the loop
  metalink  MetaLink, the HeartbeatSink over meta.heartbeat / meta.bad_replica
  service   the RPC handlers, tying the above together
  server    configuration and `serve_chunk_server`, the process's main task

See docs/chunk-server.md.
"""
