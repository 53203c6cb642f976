"""Files on disk: owner-only state dirs, secrets written whole with their final mode, created once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cocoon.fsutil import create_once, open_sqlite, private_dir, write_atomically


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_state_dirs_are_created_owner_only_with_every_missing_parent(tmp_path: Path) -> None:
    old_umask = os.umask(0o000)  # even a permissive umask leaves them owner-only
    try:
        assert private_dir(tmp_path / "a" / "b" / "c") == tmp_path / "a" / "b" / "c"
        open_sqlite(tmp_path / "d" / "e" / "books.sqlite").close()
    finally:
        os.umask(old_umask)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c", "d", "d/e")] == [0o700] * 5
    (tmp_path / "shared").mkdir(mode=0o755)
    private_dir(tmp_path / "shared")
    assert mode(tmp_path / "shared") == 0o755  # an existing directory is the operator's choice


def test_a_secret_is_written_whole_with_its_final_mode_and_created_once(tmp_path: Path) -> None:
    target = tmp_path / "key"
    write_atomically(target, b"first", 0o600)
    write_atomically(target, b"second", 0o600)
    assert target.read_bytes() == b"second" and mode(target) == 0o600
    assert create_once(tmp_path / "once", b"winner", 0o600) == b"winner"
    assert create_once(tmp_path / "once", b"late", 0o600) == b"winner"  # a later creator reads the winner's
    assert mode(tmp_path / "once") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key", "once"]  # no temporary file left behind
