"""Build hook: the only reason this file exists is cffi's `cffi_modules`,
which builds the native module (API mode) at install time."""

from setuptools import setup

setup(cffi_modules=["native/build.py:ffibuilder"])
