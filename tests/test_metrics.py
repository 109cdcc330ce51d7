"""returnn_ray.metrics: the JSON-lines metrics file, its writer and reader (no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from returnn_ray.config import Config
from returnn_ray.errors import UserError
from returnn_ray.metrics import FILE_NAME, MetricsWriter, last_run, metrics_path, read_metrics
from returnn_ray.config import load_settings
from returnn_ray.training.log import DriverLog, LocalChannel, WorkerLog

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_events_come_back_with_their_types_in_order(tmp_path):
    path = str(tmp_path / "m.jsonl")
    writer = MetricsWriter(path, task="train")
    writer.write("run_start", workers=2, since_start=1.25)
    writer.write("epoch_end", epoch=np.int64(3), scores={"dev_score": np.float32(0.5), "train_score": 1.5},
                 learning_rate=0.001, epoch_time=2.0)
    events = read_metrics(path)
    assert [e["event"] for e in events] == ["run_start", "epoch_end"]
    assert all(e["task"] == "train" and e["run"] == writer.run and isinstance(e["time"], float) for e in events)
    end = events[1]
    assert end["epoch"] == 3 and type(end["epoch"]) is int
    assert end["scores"] == {"dev_score": 0.5, "train_score": 1.5} and type(end["scores"]["dev_score"]) is float
    assert end["learning_rate"] == 0.001 and events[0]["workers"] == 2
    # one object per line, plain JSON: NaN (not JSON) is written as null
    writer.write("epoch_end", epoch=4, scores={"dev_score": float("nan")})
    lines = open(path, encoding="utf-8").read().splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["scores"] == {"dev_score": None}
    assert read_metrics(path, event="epoch_end")[-1]["epoch"] == 4


def test_a_torn_last_line_is_ignored_and_the_next_run_starts_a_line_of_its_own(tmp_path):
    path = str(tmp_path / "m.jsonl")
    MetricsWriter(path, task="train").write("epoch_end", epoch=1)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"event": "epoch_end", "epo')  # a crash mid-write
    assert [e["epoch"] for e in read_metrics(path)] == [1]
    rerun = MetricsWriter(path, task="train")
    rerun.write("epoch_end", epoch=2)
    events = read_metrics(path)
    assert [e["epoch"] for e in events] == [1, 2]
    assert [e["epoch"] for e in last_run(events)] == [2] and last_run(events)[0]["run"] == rerun.run


def test_start_up_events_wait_for_the_first_result_so_a_run_that_fails_before_leaves_no_file(tmp_path):
    path = tmp_path / "out" / "m.jsonl"
    writer = MetricsWriter(str(path), task="train")
    writer.write("run_start", workers=1)
    writer.write("first_step", epoch=1, step=0)
    assert not path.exists()  # bad input found in the first epoch: nothing left behind
    writer.write("epoch_end", epoch=1)
    assert [e["event"] for e in read_metrics(str(path))] == ["run_start", "first_step", "epoch_end"]


def test_since_keeps_the_events_of_a_later_run(tmp_path):
    path = str(tmp_path / "m.jsonl")
    writer = MetricsWriter(path, task="search")
    writer.write("run_start", time=100.0)
    writer.write("inference_end", time=200.0)
    assert [e["event"] for e in read_metrics(path, since=150.0)] == ["inference_end"]
    assert read_metrics(str(tmp_path / "none.jsonl")) == []


def test_an_unwritable_metrics_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"cannot write metrics file .*; fix `metrics_file`"):
        MetricsWriter(str(tmp_path / "file" / "m.jsonl"), task="train")


def test_the_default_is_next_to_the_main_output_and_the_setting_wins(tmp_path):
    assert metrics_path(None, str(tmp_path / "models" / "net")) == str(tmp_path / "models" / FILE_NAME)
    settings = load_settings(Config({"metrics_file": "run.jsonl"}))
    assert metrics_path(settings.run.metrics_file, "models/net") == "run.jsonl"
    assert load_settings(Config({})).run.metrics_file is None


def test_rank_0_events_reach_the_file_through_the_drivers_log(tmp_path):
    path = str(tmp_path / "m.jsonl")
    q = LocalChannel()
    rank0 = WorkerLog(q, enabled=True, verbosity=3)
    rank1 = WorkerLog(q, enabled=False, verbosity=3)
    rank0.first_step(2.5, epoch=1, step=0)
    rank0.event("epoch_end", epoch=1, scores={"dev_score": 0.25})
    rank1.event("epoch_end", epoch=1, scores={"dev_score": 9.0})  # other ranks send nothing
    with open(os.devnull, "w") as out:
        DriverLog(q, out=out, metrics=MetricsWriter(path, task="train")).start().close()  # drains the queue
    events = read_metrics(path)
    assert [e["event"] for e in events] == ["first_step", "epoch_end"]
    assert events[0]["since_start"] == 2.5 and events[1]["scores"] == {"dev_score": 0.25}
    assert events[0]["time"] <= events[1]["time"]  # stamped where they happened


def test_a_process_start_is_when_it_started_not_up_to_a_second_before(tmp_path):
    """``since_start`` counts from the process's start: within a few clock ticks of when it was
    spawned. (psutil's ``btime`` + ticks is whole seconds early or late: 0.93 s here.)"""
    code = "from returnn_ray.metrics import process_started_at; print(repr(process_started_at()))"
    spawned = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": REPO}).stdout
    started = float(out)
    assert spawned - 0.05 <= started <= time.time()
    assert started - spawned < 0.5  # the interpreter's own start comes after
