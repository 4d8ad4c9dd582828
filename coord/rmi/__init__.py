"""Remote objects on the RPC layer (RMI): export an object, hand out a handle,
call its declared methods through a typed proxy; handles live as long as the
client renews their lease.  See docs/rmi.md.

  interface.py  @remote_interface: which methods of an object are remote
  table.py      Handle, ObjectTable (sans-IO: ids, leases, collection), RmiConfig
  codec.py      argument/result marshalling, handles passed by reference
  messages.py   rmi.invoke / rmi.renew / rmi.release
  server.py     RmiServer: export, serve, collect
  client.py     RmiClient: proxies, lease keeper; NoSuchObject
"""

from coord.rmi.client import NoSuchObject, Proxy, RmiClient, handle_of
from coord.rmi.codec import MarshalError
from coord.rmi.interface import remote_interface, spec_of
from coord.rmi.server import RmiServer
from coord.rmi.table import Handle, HandleId, RmiConfig

__all__ = [
    "Handle",
    "HandleId",
    "MarshalError",
    "NoSuchObject",
    "Proxy",
    "RmiClient",
    "RmiConfig",
    "RmiServer",
    "handle_of",
    "remote_interface",
    "spec_of",
]
