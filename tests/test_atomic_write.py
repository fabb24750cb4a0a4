"""Checkpoint files: the umask is honoured, and temp files of writers that died
mid-save are removed on the next save while a live writer's temp file is left alone
(with real writer processes, one of them killed with SIGKILL)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnxp
from nnxp import layers
from nnxp.io import atomic_write, remove_stale_temp_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock-based temp file cleanup is POSIX only")

# a writer that stops half-way through its temp file until told to go on (a line on stdin)
WRITER = """
import sys
from nnxp.io import atomic_write

def write(f):
    f.write(b"first half ")
    f.flush()
    print("writing", flush=True)
    sys.stdin.readline()
    f.write(b"second half")

atomic_write(sys.argv[1], write)
print("done", flush=True)
"""


def _net() -> nnxp.Sequential:
    return nnxp.Sequential([layers.Dense(3, 2)], backend="numpy", seed=0)


def _temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def _start_writer(path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "writing"  # its temp file now exists, half written
    return proc


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoint_mode_follows_umask(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "model.npz"
    old = os.umask(umask)
    try:
        _net().save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    assert nnxp.load(path).num_params() == 8


def test_temp_name_says_who_writes(tmp_path: Path) -> None:
    proc = _start_writer(tmp_path / "m.npz")
    try:
        (name,) = _temps(tmp_path)
        assert name.startswith(".m.npz.") and f".{proc.pid}." in name and name.endswith(".nnxp.tmp")
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0 and (tmp_path / "m.npz").read_bytes() == b"first half second half"
    assert _temps(tmp_path) == []


def test_live_writer_temp_left_alone_killed_writer_temp_removed(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    _net().save(path)
    good = path.read_bytes()

    live = _start_writer(path)
    try:
        (live_tmp,) = _temps(tmp_path)
        _net().save(path)  # another writer saves meanwhile: the live writer's temp file stays
        assert _temps(tmp_path) == [live_tmp]
        assert remove_stale_temp_files(tmp_path) == []
    finally:
        out, _ = live.communicate("\n", timeout=60)
    assert live.returncode == 0 and out.strip() == "done"  # it finished its write undisturbed
    assert path.read_bytes() == b"first half second half" and _temps(tmp_path) == []

    live = _start_writer(path)  # a slow writer that stays alive throughout
    try:
        (live_tmp,) = _temps(tmp_path)
        for _ in range(3):  # writers killed mid-save (kill -9) leave their temp files behind ...
            proc = _start_writer(path)
            (dead_tmp,) = [n for n in _temps(tmp_path) if f".{proc.pid}." in n]
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            # ... until the next writer starts: only the last dead one's and the live one's remain
            assert _temps(tmp_path) == sorted([live_tmp, dead_tmp])
        assert path.read_bytes() == b"first half second half"  # the checkpoint itself is intact
        _net().save(path)  # the next save removes the dead writer's file, not the live one's
        assert _temps(tmp_path) == [live_tmp]
        assert nnxp.load(path).num_params() == 8
    finally:
        live.communicate("\n", timeout=60)
    assert live.returncode == 0 and _temps(tmp_path) == []
    assert good != path.read_bytes() == b"first half second half"


def test_failed_write_removes_its_temp(tmp_path: Path) -> None:
    def boom(f):
        f.write(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "a.bin", boom)
    assert os.listdir(tmp_path) == []


def test_other_hidden_files_untouched(tmp_path: Path) -> None:
    keep = [".notes.tmp", ".tmpabc123.tmp", ".model.npz.swp"]  # not ours (the last-but-one: old mkstemp name)
    for k in keep:
        (tmp_path / k).write_bytes(b"x")
    atomic_write(tmp_path / "model.npz", lambda f: np.save(f, np.zeros(2)))
    assert sorted(os.listdir(tmp_path)) == sorted([*keep, "model.npz"])
