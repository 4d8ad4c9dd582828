"""Fixtures for tests on real FUSE mounts: the lossyfs crash-testing file system."""

from tests.lossyfs.fixtures import lossy_mount, lossy_mount_factory

__all__ = ["lossy_mount", "lossy_mount_factory"]
