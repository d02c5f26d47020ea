"""replace_file: the old file stays whole, and no temporary is left, whatever fails."""

import os
import stat

import pytest

from busd.store.local import files
from busd.store.local.files import replace_file, sync_dir


@pytest.mark.parametrize("named", [True, False], ids=["named temp", "own temp"])
def test_replace_file_replaces_whole(tmp_path, named):
    path = tmp_path / "state"
    path.write_bytes(b"old")
    replace_file(path, b"new" * 1000, tmp_path / "state.tmp" if named else None)
    assert path.read_bytes() == b"new" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == (0o644 & ~_umask() if named else 0o600)  # mkstemp's, for the dedup cache
    sync_dir(tmp_path)


@pytest.mark.parametrize("named", [True, False], ids=["named temp", "own temp"])
@pytest.mark.parametrize("fails", ["write", "fsync"])
def test_a_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch, named, fails):
    path = tmp_path / "state"
    path.write_bytes(b"old")
    real_write = os.write

    def short_then_full(fd, data):  # 5 bytes land, then the disk is full
        if len(data) > 5:
            return real_write(fd, bytes(data)[:5])
        raise OSError(28, "No space left on device")

    def fsync_fails(fd):
        raise OSError(5, "Input/output error")

    if fails == "write":
        monkeypatch.setattr(os, "write", short_then_full)
    else:
        monkeypatch.setattr(files.os, "fsync", fsync_fails)
    with pytest.raises(OSError):
        replace_file(path, b"new" * 1000, tmp_path / "state.tmp" if named else None)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
