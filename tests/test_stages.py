"""returnn_ray.experiment.stages: commands run as stages with a log each, and the stage table (no Ray)."""

import re
import sys

import pytest

from returnn_ray.experiment.stages import Command, Runner, StageFailed, StageResult, print_table


def test_a_stage_prints_and_logs_its_output_with_times(tmp_path, capsys):
    runner = Runner(str(tmp_path / "logs"), {"GREETING": "hello"})
    cmd = [sys.executable, "-c", "import os; print(os.environ['GREETING']); print('second')"]
    result = runner.run("greet", cmd, ["python", "greet.py"])
    assert [line for _, line in result.lines] == ["hello", "second"]
    assert all(0 <= t <= result.wall for t, _ in result.lines)
    assert (tmp_path / "logs" / "greet.log").read_text() == "$ python greet.py\nhello\nsecond\n"
    assert "== greet\n$ python greet.py\n  hello\n  second\n" in capsys.readouterr().out


def test_a_failing_stage_names_its_exit_code_and_log(tmp_path):
    runner = Runner(str(tmp_path), {})
    with pytest.raises(StageFailed, match=r"stage bad failed with exit code 3; its output is in .*bad\.log") as info:
        runner.run("bad", [sys.executable, "-c", "raise SystemExit(3)"], ["bad"])
    assert info.value.code == 3


def test_a_failing_stage_says_the_line_that_tells_why(tmp_path):
    """A stage that dies in a traceback (or a Ray crash) names its cause, not only its log: the
    line is what a CI log cut to its last lines still shows."""
    runner = Runner(str(tmp_path), {})
    code = "print('working'); import sys; sys.stdout.flush(); raise ValueError('the shard is empty')"
    with pytest.raises(StageFailed, match=r"stage bad failed with exit code 1 \(ValueError: the shard is empty\); "
                                          r"its output is in .*bad\.log"):
        runner.run("bad", [sys.executable, "-c", code], ["bad"])


def test_commands_run_together_connect_one_after_the_other(tmp_path, capsys):
    """The second returnn-ray command starts only once the first said its first ``returnn-ray:``
    line (said once its Ray driver is connected); then both run at once, lines prefixed by stage."""
    first = (f"import time; print('ray: log', flush=True); time.sleep(1.0); open({str(tmp_path / 'said')!r}, 'w').close(); "
             f"print('returnn-ray: forward with 1 actor(s) on Ray', flush=True); time.sleep(1.0); print('first done')")
    second = (f"import os; print('started after: ' + str(os.path.exists({str(tmp_path / 'said')!r})), flush=True); "
              f"print('returnn-ray: search with 1 actor(s) on Ray')")
    runner = Runner(str(tmp_path / "logs"), {})
    fwd, search = runner.run_together([Command("forward", [sys.executable, "-c", first], ["fwd"], ["fwd"]),
                                       Command("search", [sys.executable, "-c", second], ["search"], ["search"])])
    assert [line for _, line in fwd.lines] == ["ray: log", "returnn-ray: forward with 1 actor(s) on Ray", "first done"]
    assert [line for _, line in search.lines][0] == "started after: True"
    assert search.start >= fwd.start + 1.0
    assert search.start < fwd.start + fwd.wall - 0.5  # still at once: the second ran while the first did
    out = capsys.readouterr().out
    assert "  [forward] first done\n" in out and "  [search] started after: True\n" in out
    assert (tmp_path / "logs" / "forward.log").read_text().endswith("ray: log\nreturnn-ray: forward with 1 actor(s) on Ray\nfirst done\n")


def test_the_table_sums_only_the_stages_whose_start_up_is_known(capsys):
    print_table([StageResult("data", 5.0, None, "(no Ray)"), StageResult("train", 30.0, 6.0, "steps"),
                 StageResult("search", 10.0, 4.0, "rate")])
    out = capsys.readouterr().out
    assert re.search(r"^train\s+30\.0\s+6\.0 s\s+20%\s+steps$", out, re.M), out
    # 10 s of start-up of the 40 s the Ray stages took; data's 5 s count in the total wall only
    assert re.search(r"^total\s+45\.0\s+10\.0 s\s+25%\s+\(of the stages that use Ray\)$", out, re.M), out
