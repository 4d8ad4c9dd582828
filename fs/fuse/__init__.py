"""The FUSE mount: pyfuse3 operations over `FsApi` (fs/api.py).

Modules: `config` (FuseConfig, MountConfig: frozen, validated), `creds`
(supplementary groups of the calling process from /proc), `operations` (the
pyfuse3.Operations subclass: thin handlers, exact lookup counts, errors
translated once), `mount` (init/main/close lifecycle, signals, clean unmount).
pyfuse3 is imported only by `operations` and `mount`.
"""
