"""cffi API-mode build script for ddfs's native module (`native._native`).

Invoked by setuptools through `cffi_modules` in setup.py at install time.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    int ddfs_native_abi(void);
    """
)
ffibuilder.set_source(
    "native._native",
    '#include "ddfs_native.h"',
    sources=["native/ddfs_native.c"],
    include_dirs=["native"],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
