"""returnn_ray.experiment.stages: commands run as stages with a log each, and the stage table (no Ray)."""

import re
import sys

import pytest

from returnn_ray.experiment.stages import Runner, StageFailed, StageResult, print_table


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


def test_the_table_sums_only_the_stages_whose_start_up_is_known(capsys):
    print_table([StageResult("data", 5.0, None, "(no Ray)"), StageResult("train", 30.0, 6.0, "steps"),
                 StageResult("search", 10.0, 4.0, "rate")])
    out = capsys.readouterr().out
    assert re.search(r"^train\s+30\.0\s+6\.0 s\s+20%\s+steps$", out, re.M), out
    # 10 s of start-up of the 40 s the Ray stages took; data's 5 s count in the total wall only
    assert re.search(r"^total\s+45\.0\s+10\.0 s\s+25%\s+\(of the stages that use Ray\)$", out, re.M), out
