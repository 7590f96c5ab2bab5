"""Helpers for tests that start real processes."""
import os
import time


def group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """True once no process of process group `pgid` is left (a run and its DataLoader
    workers), within `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
