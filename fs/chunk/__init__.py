"""The chunk server (`ddfs chunk`): GFS-style chunk replicas on local disk.

Modules:
  protocol  the `chunk.*` RPC messages, replies and error codes (the contract)
  blocks    pure block arithmetic: touched blocks, read-modify-write images, CRCs
  staging   the bounded, expiring buffer of pushed data (sans-IO)
  ordering  per-chunk admission: fencing, versions, serial order (sans-IO)
  store     the ChunkStore interface, its in-memory twin and the file+LMDB store
  pipeline  forwarding pushes along a chain, fanning applies out to secondaries
  heartbeat reports to the metadata leader (HeartbeatSink) and the loop
  service   the RPC handlers, tying the above together
  server    configuration and `serve_chunk_server`, the process's main task

See docs/chunk-server.md.
"""
