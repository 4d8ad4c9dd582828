"""Real `ddfs` processes for tests, on the launcher of `tools/proclaunch.py`.

Children are started through its exec wrapper, so they die with the test
process even if pytest itself is SIGKILLed; `ProcessGroup.close()` (called by
every fixture's teardown, also when a test fails) kills and reaps the rest.
This module only adds a blocking start for synchronous fixtures and helpers.
"""

from __future__ import annotations

import time

from tools.proclaunch import ROOT, NotReady, ProcessGroup, ddfs_argv, free_ports
from tools.proclaunch import Proc as _AsyncProc

__all__ = ["ROOT", "NotReady", "Proc", "ProcessGroup", "ddfs_argv", "free_ports"]


class Proc(_AsyncProc):
    def launch(self, ready_text: str, timeout: float = 20.0) -> None:
        """Spawn and block until the new incarnation prints `ready_text`."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self._check(ready_text):  # raises NotReady if the process exited
            if time.monotonic() > deadline:
                raise NotReady(f"{self.name} not ready after {timeout} s:\n"
                               f"{self.output()[-3000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid
