"""The channel from the training workers to the driver's log (returnn_ray.training.log), no Ray:
worker processes are played by unpickled copies of the driver's channel, as Ray hands them over."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys

import pytest

from returnn_ray.errors import UserError
from returnn_ray.metrics import MetricsWriter, read_metrics
from returnn_ray.training.log import DriverLog, FileChannel, WorkerLog

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_each_worker_process_items_reach_the_driver_in_order_and_once(tmp_path):
    driver = FileChannel(str(tmp_path), wants_progress=True)
    # two worker processes: each writes a file of its own (by pid); they put from separate interpreters
    code = (
        "import pickle, sys; channel = pickle.loads(sys.stdin.buffer.read()); "
        "[channel.put(('line', f'{sys.argv[1]} {i}')) for i in range(50)]; "
        "channel.put(('progress', (1, 3, 10, 0.5, 2.0))); channel.put(('metrics', {'event': 'e', 'n': sys.argv[1]}))"
    )
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, name], input=pickle.dumps(driver), check=True,
                       env={**os.environ, "PYTHONPATH": REPO})
    items = driver.take()
    assert len(os.listdir(tmp_path)) == 2
    for name in ("a", "b"):
        mine = [item for item in items if (item[0] == "line" and item[1].startswith(name)) or
                (item[0] == "metrics" and item[1]["n"] == name)]
        assert mine == [("line", f"{name} {i}") for i in range(50)] + [("metrics", {"event": "e", "n": name})]
    assert items.count(("progress", (1, 3, 10, 0.5, 2.0))) == 2  # a tuple again, as the driver shows it
    assert driver.take() == []  # nothing twice


def test_a_line_half_written_waits_for_its_end(tmp_path):
    driver = FileChannel(str(tmp_path), wants_progress=False)
    path = tmp_path / "host-1.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"item": ["line", "one"]}\n{"item": ["line", "t')
        f.flush()
        assert driver.take() == [("line", "one")]
        f.write(b'wo"]}\n')
        f.flush()
        assert driver.take() == [("line", "two")]
    assert driver.take() == []


def test_a_line_no_worker_wrote_whole_is_skipped_and_the_lines_around_it_arrive(tmp_path):
    # NUL bytes where NFS writes arrived out of order, a torn line from a process that died mid-write
    (tmp_path / "host-1.jsonl").write_bytes(b'{"item": ["line", "a"]}\n\0\0\0\n{"item": ["li\n{"item": ["line", "c"]}\n')
    out = io.StringIO()
    log = DriverLog(FileChannel(str(tmp_path), wants_progress=False), out=out).start()
    log.close()
    assert out.getvalue() == "a\nc\n"


def test_the_driver_gets_rank_0s_lines_and_events_through_files_and_no_progress_off_a_terminal(tmp_path):
    driver = FileChannel(str(tmp_path), wants_progress=False)
    worker = pickle.loads(pickle.dumps(driver))  # as a Ray worker gets it
    rank0, rank1 = WorkerLog(worker, enabled=True, verbosity=3), WorkerLog(worker, enabled=False, verbosity=3)
    rank0.line("epoch 1 done")
    rank0.event("epoch_end", epoch=1)
    rank1.line("not from rank 1")
    assert not rank0.progress_due(0, 10)  # no terminal to show it on: nothing computed or sent
    rank0.progress(epoch=1, step=9, num_steps=10, loss=1.0, elapsed=1.0)
    out, path = io.StringIO(), str(tmp_path / "m.jsonl")
    DriverLog(driver, out=out, metrics=MetricsWriter(path, task="train")).start().close()
    assert out.getvalue() == "epoch 1 done\n"
    assert [(e["event"], e["epoch"]) for e in read_metrics(path)] == [("epoch_end", 1)]


def test_a_worker_that_does_not_see_the_drivers_directory_says_the_model_dir_must_be_shared(tmp_path):
    # a node whose model dir is its own disk, not the driver's storage: the channel directory
    # the driver made (a name of its own) is not there
    models = tmp_path / "models"
    channel = pickle.loads(pickle.dumps(FileChannel(str(models / "ray_train" / "log-0123"), wants_progress=False)))
    with pytest.raises(UserError, match=r"does not see '.*models', the model's directory.*every node shares"):
        channel.check_visible()
    with pytest.raises(UserError):
        WorkerLog(channel, enabled=True, verbosity=3).line("epoch 1")
    assert not models.exists()  # nothing made where nobody reads it
