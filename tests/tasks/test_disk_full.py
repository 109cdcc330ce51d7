"""A full disk while a checkpoint is saved: one clear line, the previous checkpoint intact, no temp
file left, and the same command resumes once there is room again.

The disk is a real one: a small tmpfs mounted for the test (needs root, as in CI; skipped where
mounting is not allowed, and a failure then with CI=true).
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from returnn_ray.atomic import is_temp_path
from returnn_ray.cli import main
from returnn_ray.training.checkpoints import checkpoint_path, find_checkpoints, load_checkpoint, opt_path
from returnn_ray.training.lr_file import load_learning_rate_file
from skip_or_fail import skip_or_fail  # tests/ is on sys.path (rootdir conftest)
from test_train import write_config  # tests/tasks is on sys.path (rootdir import)

NETWORK = {  # ~70k parameters: checkpoints of a few hundred KB, far above tmpfs's 4 KB pages
    "hidden": {"class": "linear", "activation": "tanh", "n_out": 256},
    "hidden2": {"class": "linear", "activation": "tanh", "n_out": 256, "from": ["hidden"]},
    "output": {"class": "softmax", "loss": "ce", "from": ["hidden2"]},
}


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_a_rerun_resumes(small_disk, capsys):
    config = write_config(small_disk, network=NETWORK, num_epochs=1)
    args = [config, "++ray_local_mode", "True"]
    assert main(args) == 0
    model = str(small_disk / "model")
    before = {p: open(p, "rb").read() for p in (checkpoint_path(model, 1), opt_path(model, 1))}

    # fill the disk up to less than one checkpoint's room
    stat = os.statvfs(small_disk)
    free = stat.f_bavail * stat.f_frsize
    room = len(before[checkpoint_path(model, 1)]) // 2
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - room))
    capsys.readouterr()

    assert main(args + ["++num_epochs", "2"]) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("returnn-ray: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "model.002" in lines[0], lines[0]
    # epoch 1 as it was, nothing of epoch 2 that could be mistaken for a checkpoint, no temp file
    assert find_checkpoints(model) == [1]
    for path, content in before.items():
        assert open(path, "rb").read() == content
    load_checkpoint(model, 1)
    assert not [n for n in os.listdir(small_disk) if is_temp_path(n)], os.listdir(small_disk)
    load_learning_rate_file(str(small_disk / "learning_rates"))

    os.unlink(small_disk / "filler")
    assert main(args + ["++num_epochs", "2"]) == 0
    assert find_checkpoints(model) == [1, 2]
    assert load_learning_rate_file(str(small_disk / "learning_rates")).keys() == {1, 2}
