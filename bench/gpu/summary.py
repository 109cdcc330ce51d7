"""Merge bench/gpu/run.sh's step results into ``summary.json`` and ``summary.txt`` under --out.

Exit code 1 when a step failed (its exit code, 124 for a timeout), else 0. The figures come from
the JSON files the benchmarks wrote (``--json``) and pytest's closing line in ``tests.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from returnn_ray.atomic import atomic_write

TRAIN_GOAL = 0.95  # returnn-ray frames/s over the plain loop's (issue 17)


def read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def pytest_counts(log: str) -> dict[str, int]:
    """The counts of pytest's closing line (``3 passed, 2 skipped in 1.2s``), {} without one."""
    try:
        with open(log) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        if re.search(r"\bin [\d.]+s\b", line):
            return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", line)}
    return {}


def text(summary: dict) -> str:
    lines = [f"bench/gpu/run.sh{' --dry-run (CPU, tiny sizes: no figures to report)' if summary['dry_run'] else ''}"]
    lines += [f"  {name}: exit {rc}{' (timed out)' if rc == 124 else ''}" for name, rc in summary["exit_codes"].items()]
    train = summary.get("train")
    if train:
        lines.append(
            f"train ({train['device']}, torch_amp {train['amp']}, {train['layers']}x BLSTM {train['units']}, "
            f"{train['frames_per_epoch']} frames/epoch): plain {train['plain_frames_per_s']:.0f} frames/s, "
            f"returnn-ray {train['returnn_ray_frames_per_s']:.0f} frames/s, ratio {train['throughput_ratio']:.3f} "
            f"(goal >= {TRAIN_GOAL}); time to first step {train['time_to_first_step_s']:.1f} s"
        )
    forward = summary.get("forward")
    if forward:
        lines.append(
            f"forward ({forward['device']}): plain {forward['plain_seqs_per_s']:.1f} seqs/s, one actor "
            f"{forward['one_actor_seqs_per_s']:.1f} seqs/s, ratio {forward['one_actor_vs_plain']:.3f}"
        )
    if summary["tests"]:
        lines.append("tests (pytest -m gpu): " + ", ".join(f"{n} {w}" for w, n in summary["tests"].items()))
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", required=True, help="where the steps wrote train.json and forward.json")
    parser.add_argument("--dry-run", type=int, default=0)
    parser.add_argument("--rc", nargs="*", default=[], help="NAME=EXIT_CODE per step")
    args = parser.parse_args()
    codes = {name: int(rc or 1) for name, rc in (item.split("=", 1) for item in args.rc)}
    summary = {
        "dry_run": bool(args.dry_run),
        "exit_codes": codes,
        "train": read_json(os.path.join(args.work, "train.json")),
        "forward": read_json(os.path.join(args.work, "forward.json")),
        "tests": pytest_counts(os.path.join(args.out, "tests.log")),
    }
    if summary["train"]:
        summary["train"]["goal"] = TRAIN_GOAL
    atomic_write(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=1) + "\n")
    report = text(summary)
    atomic_write(os.path.join(args.out, "summary.txt"), report)
    print(report, end="")
    return 1 if any(codes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
