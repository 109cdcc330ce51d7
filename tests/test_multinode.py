"""``experiments/asr.py`` on a Ray cluster of several nodes on this machine (``ray.cluster_utils``):
DDP training workers and forward/search actors run on different nodes, checked by Ray node id.

The cluster runs in its own subprocess with its own Ray (its own GCS and raylets), so it never
meets the suite's shared local Ray (``ray_session``); it is shut down in a ``finally`` there.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from returnn_ray.cluster.start import private_auth_env

pytestmark = pytest.mark.ray  # starts a Ray cluster of its own: `-m "not ray"` leaves it out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "asr.py")

# A head with no CPUs (it runs the drivers and Ray Train's controller) and two 1-CPU worker nodes:
# two DDP workers or two actors of one CPU each can only run one per worker node. Prints the node
# ids, then runs asr.py against the cluster; the cluster goes in the `finally`.
CLUSTER_SCRIPT = """
import os, shlex, subprocess, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
try:
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    print("HEAD NODE", cluster.head_node.node_id, flush=True)
    print("WORKER NODES", " ".join(n.node_id for n in workers), flush=True)
    code = subprocess.run([sys.executable, *sys.argv[1:], "--address", cluster.address]).returncode
    if code == 0:  # asr.py runs forward and search at once, one actor each: then one forward on both nodes
        out = sys.argv[sys.argv.index("--out") + 1]
        with open(os.path.join(out, "logs", "forward.log")) as f:
            command = shlex.split(f.readline().removeprefix("$ "))
        cli = [os.path.join(os.path.dirname(sys.executable), "returnn-ray")]
        print("== forward with 2 actors", flush=True)
        code = subprocess.run(cli + command[1:] + ["++ray_num_workers", "2"]).returncode
    sys.exit(code)
finally:
    cluster.shutdown()
"""


def test_asr_experiment_spreads_training_workers_and_forward_actors_over_nodes(tmp_path):
    out = tmp_path / "asr"
    args = [SCRIPT, "--scale", "0.15", "--out", str(out), "--workers", "2", "--epochs", "1", "--skip-sweep"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # The cluster and the drivers asr.py starts share one token (none may be in ~/.ray), or Ray
    # Train's controller is cancelled before it runs.
    env.update(private_auth_env(), RAY_USAGE_STATS_ENABLED="0")
    # Ray Data hands out batches as soon as one actor is up; the eval set's few batches could all go
    # to the first. Waiting for the whole pool first gives each actor (node) some of them.
    env["RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S"] = "120"
    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER_SCRIPT, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)  # asr.py and the cluster script's `finally`
        output, _ = proc.communicate(timeout=60)
        raise AssertionError(f"asr.py on 3 nodes took over 7 minutes:\n{output[-5000:]}")
    assert proc.returncode == 0, output[-5000:]

    head = re.search(r"^HEAD NODE (\w+)$", output, re.M).group(1)
    workers = set(re.search(r"^WORKER NODES (.+)$", output, re.M).group(1).split())
    assert len(workers) == 2 and head not in workers

    # training: both DDP ranks came up, each on another worker node
    train = output[output.index("\n== train") : output.index("\n== forward")]
    assert "training with 2 worker(s) on Ray" in train
    ranks = dict(re.findall(r"training worker (\d+) up [\d.]+ s after returnn-ray started on node (\w+)", train))
    assert set(ranks) == {"0", "1"}, train
    assert set(ranks.values()) == workers, (ranks, workers)

    # forward and search ran at once, one actor each: together on both worker nodes
    inference, again = output[output.index("\n== forward") :].split("== forward with 2 actors")
    nodes = set()
    for task in ("forward", "search"):
        line = re.search(rf"returnn-ray: {task}: batches per node: (.+)", inference).group(1)
        nodes |= set(dict(re.findall(r"node (\w+): (\d+)", line)))
        assert re.search(rf"{task} done: 15 seqs \(15 run now on 1 node\(s\)", inference), inference
    assert nodes == workers, (nodes, workers)
    # one forward of 2 actors: its batches came from both worker nodes
    line = re.search(r"returnn-ray: forward: batches per node: (.+)", again).group(1)
    counts = dict(re.findall(r"node (\w+): (\d+)", line))
    assert set(counts) == workers and all(int(n) > 0 for n in counts.values()), (line, workers)
    assert re.search(r"forward done: 15 seqs \(15 run now on 2 node\(s\)", again), again

    # the experiment's result: the stage table and the WER line
    assert re.search(r"^train\s+\d+\.\d", output, re.M) and re.search(r"^fwd\+search\s+\d+\.\d", output, re.M)
    assert re.search(r"^WER [\d.]+% \(\d+/\d+ words\) on the eval set \(15 seqs\)", output, re.M), output[-3000:]
