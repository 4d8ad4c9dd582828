"""The file-system client library: `NetworkFs`, the `FsApi` over a ddfs cluster.

Modules (docs/fs-client.md describes caching, buffering, consistency,
timeouts and errors):

| module | what it holds |
| --- | --- |
| `network.py` | `NetworkFs` (the FsApi; the time bound and error edge), `connect()` |
| `config.py` | `FsClientConfig` |
| `chunkio.py` | `ChunkIO`: reads with replica fallback, leases, pushes, writes, truncates |
| `writeback.py` | `WriteBack`: background flush jobs per file, in order |
| `files.py` | `Handle`, `FileState` (per-inode buffer, size overlay, job tickets) |
| `buffer.py` | `WriteBuffer`: coalescing chunk-aligned extents (pure) |
| `layout.py` | spans, push parts, replica order (pure) |
| `caches.py` | location cache, lease table, suspects (sans-IO) |
| `errors.py` | `translate`: the one failure -> errno table |
"""

from fs.client.config import FsClientConfig
from fs.client.network import NetworkFs, connect

__all__ = ["FsClientConfig", "NetworkFs", "connect"]
