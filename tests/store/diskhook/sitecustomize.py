"""Test-only fsync hook: a busd started with PYTHONPATH=<this folder> loads it (Python
imports `sitecustomize` at start-up) and its os.fsync of segment files then obeys:

- BUSD_TEST_FSYNC_HOLD=<file>: while <file> exists, the fsync waits (a slow disk);
- BUSD_TEST_FSYNC_FAIL=<file>: while <file> exists, the fsync of a segment whose path
  contains the file's text fails with EIO (a dying disk);
- BUSD_TEST_FSYNC_LOG=<file>: each successful fsync appends "<path> <size>" to <file>,
  the size the segment had when fsync was called: a power loss would keep that much.
"""

import errno
import os
import time

_fsync = os.fsync
_HOLD = os.environ.get("BUSD_TEST_FSYNC_HOLD")
_FAIL = os.environ.get("BUSD_TEST_FSYNC_FAIL")
_LOG = os.environ.get("BUSD_TEST_FSYNC_LOG")


def _hooked_fsync(fd):
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        path = ""
    if not path.endswith(".seg"):
        return _fsync(fd)
    while _HOLD and os.path.exists(_HOLD):
        time.sleep(0.01)
    if _FAIL:
        try:
            with open(_FAIL) as fh:
                if fh.read().strip() in path:
                    raise OSError(errno.EIO, "Input/output error (injected by the test)")
        except FileNotFoundError:
            pass
    size = os.fstat(fd).st_size
    _fsync(fd)
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(f"{path} {size}\n")


os.fsync = _hooked_fsync
