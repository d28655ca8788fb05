import os
import stat

import pytest

from fedfr.io import atomic_path, write_bytes_atomic, write_json_atomic


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    old = os.umask(0o022)
    try:
        write_json_atomic(target, {"x": 1})
    finally:
        os.umask(old)
    assert target.read_text().strip() == '{\n  "x": 1\n}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left


def test_failed_write_keeps_old_content_and_leaves_nothing(tmp_path):
    target = tmp_path / "b.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["b.bin"]


def test_replace_dir_swaps_whole_directories(tmp_path):
    from fedfr.io import replace_dir

    target = tmp_path / "out"
    first = tmp_path / "stage1"
    first.mkdir()
    (first / "a.txt").write_text("1")
    replace_dir(first, target)
    assert (target / "a.txt").read_text() == "1" and not first.exists()
    second = tmp_path / "stage2"
    second.mkdir()
    (second / "b.txt").write_text("2")
    replace_dir(second, target)
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # nothing of the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no leftovers
