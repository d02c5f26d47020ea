"""Test-only disk hooks: a busd started with PYTHONPATH=<this folder> loads them (Python
imports `sitecustomize` at start-up) and its os.fsync and os.write of segment files then
obey:

- BUSD_TEST_FSYNC_HOLD=<file>: while <file> exists, the fsync waits (a slow disk);
- BUSD_TEST_FSYNC_FAIL=<file>: while <file> exists, the fsync of a segment whose path
  contains the file's text fails with EIO (a dying disk);
- BUSD_TEST_FSYNC_LOG=<file>: each successful fsync appends "<path> <size>" to <file>,
  the size the segment had when fsync was called: a power loss would keep that much;
- BUSD_TEST_TEAR_WRITE=<n>: the first write of n bytes or more is cut at the last page
  boundary of the file it crosses, and the process killed (SIGKILL): what Linux does to a
  write that a kill -9 arrives during.
"""

import errno
import os
import signal
import time

_fsync = os.fsync
_write = os.write
_TEAR = int(os.environ.get("BUSD_TEST_TEAR_WRITE") or 0)
_HOLD = os.environ.get("BUSD_TEST_FSYNC_HOLD")
_FAIL = os.environ.get("BUSD_TEST_FSYNC_FAIL")
_LOG = os.environ.get("BUSD_TEST_FSYNC_LOG")


def _path(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _hooked_fsync(fd):
    path = _path(fd)
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


def _tearing_write(fd, data):
    if len(data) >= _TEAR and _path(fd).endswith(".seg"):
        size = os.fstat(fd).st_size
        page = (size + len(data)) // 4096 * 4096
        if page > size:
            _write(fd, memoryview(data)[:page - size])
        os.kill(os.getpid(), signal.SIGKILL)
    return _write(fd, data)


os.fsync = _hooked_fsync
if _TEAR:
    os.write = _tearing_write
