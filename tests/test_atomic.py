"""atomic_write: the old file or the complete new one, never a partial one."""

from __future__ import annotations

import pytest

from resumable_loader.index.atomic import atomic_write


def test_replaces_on_success(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]


def test_failure_leaves_the_old_file(tmp_path):
    target = tmp_path / "ckpt.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.bin"]
