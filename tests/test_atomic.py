"""Atomic writes: the target has the old content or the new, never part; no temp file survives an error;
OS errors (missing/unwritable directory, disk full) are one-line UserErrors naming the path."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from returnn_ray import atomic
from returnn_ray.atomic import atomic_open, atomic_torch_save, atomic_write, is_temp_path, temp_path_for
from returnn_ray.errors import UserError


def test_write_and_replace(tmp_path):
    path = str(tmp_path / "f.txt")
    atomic_write(path, "one\n")
    atomic_write(path, "two\n")
    assert open(path).read() == "two\n"
    atomic_write(path, b"\x00\x01")
    assert open(path, "rb").read() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_file_has_normal_permissions(tmp_path, umask):
    # The mode open() would give (not a temp file's 0o600), also when replacing a file of another mode.
    path = str(tmp_path / "f.txt")
    old = os.umask(umask)
    try:
        atomic_write(path, "x")
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
        os.chmod(path, 0o400)
        atomic_write(path, "y")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_temp_name():
    tmp = temp_path_for("/a/b/net.001.pt")
    assert os.path.dirname(tmp) == "/a/b"
    assert os.path.basename(tmp).startswith(f".net.001.pt.tmp-{os.getpid()}-")
    assert is_temp_path(tmp) and not is_temp_path("/a/b/net.001.pt")
    assert temp_path_for("/a/x") != temp_path_for("/a/x")


def test_error_in_body_keeps_old_file_and_removes_temp(tmp_path):
    path = str(tmp_path / "f.txt")
    atomic_write(path, "old")
    with pytest.raises(ValueError, match="boom"):
        with atomic_open(path, "w") as f:
            f.write("half of the new")
            f.flush()
            raise ValueError("boom")
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_unpicklable_torch_object_keeps_old_file(tmp_path):
    torch = pytest.importorskip("torch")
    path = str(tmp_path / "m.pt")
    atomic_torch_save({"w": torch.ones(2)}, path)
    with pytest.raises(Exception):
        atomic_torch_save({"w": torch.zeros(1000), "f": lambda: 0}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["m.pt"]


def test_disk_full_at_fsync_is_a_user_error(tmp_path, monkeypatch):
    path = str(tmp_path / "f.txt")
    atomic_write(path, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(UserError) as info:
        atomic_write(path, "new")
    msg = str(info.value)
    assert repr(path) in msg and "No space left on device" in msg and "\n" not in msg
    monkeypatch.undo()
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_file_size_limit_while_writing_is_a_user_error(tmp_path):
    # A real failing write(2) (EFBIG under RLIMIT_FSIZE, as ENOSPC would be), in a child process
    # so the limit does not touch the test run.
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    code = textwrap.dedent(
        f"""
        import resource, signal
        from returnn_ray.atomic import atomic_write
        from returnn_ray.errors import UserError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            atomic_write({str(path)!r}, b"x" * 100000)
        except UserError as e:
            print("UserError:", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("UserError: cannot write"), out.stdout + out.stderr
    assert str(path) in out.stdout and "File too large" in out.stdout
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("where", ["under_file", "missing_dir", "proc"])
def test_unwritable_directory_is_a_user_error(tmp_path, where):
    # Tests run as root, which ignores permission bits: use places nobody can create files in.
    blocker = tmp_path / "file"
    blocker.write_text("")
    path = {
        "under_file": str(blocker / "f.txt"),
        "missing_dir": str(tmp_path / "nope" / "f.txt"),
        "proc": "/proc/returnn_ray_atomic_test.txt",
    }[where]
    with pytest.raises(UserError) as info:
        atomic_write(path, "x")
    msg = str(info.value)
    assert msg.startswith(f"cannot write {path!r}: ") and "\n" not in msg
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_bad_mode():
    with pytest.raises(ValueError):
        with atomic_open("/tmp/x", "a"):
            pass
