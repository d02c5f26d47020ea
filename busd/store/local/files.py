"""Small state files replaced whole, and directory syncs: one place for the order that makes
a replacement crash-safe (the new bytes written whole and fsynced under a temporary name,
then renamed over the old file), shared by the id index, the key check and the dedup cache.
On any failure the old file stays and the temporary is removed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from busd.store.local.tail import _write_all


def replace_file(path: Path, data: bytes, temp: Path | None = None) -> None:
    """Replace `path` by `data`, through `temp` (mode 0644), or through a temporary of a
    name of its own (mode 0600) when writers may overlap. Raises OSError; the rename is
    durable once the caller syncs the directory (sync_dir)."""
    if temp is None:
        fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        temp = Path(name)
    else:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def sync_dir(folder: Path) -> None:
    """Make a create, rename or unlink in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
