"""The shipped Ray cluster-launcher configs pass Ray's own validation (offline; no Ray is started).

``ray up`` runs ``prepare_config`` (defaults of the provider, the local provider's node type,
merged setup commands) and then ``validate_config`` (Ray's JSON schema, where an unknown key
is an error, plus cross-field checks). Both are private Ray API; for the ``local`` and ``aws``
providers they need no network (the AWS calls come later, in the provider's bootstrap).
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_FILES = sorted(p.name for p in ROOT.glob("cluster*.yaml"))


def load(name: str) -> dict:
    with open(ROOT / name) as f:
        return yaml.safe_load(f)


def prepared(config: dict) -> dict:
    """What ``ray up`` validates: the config with the provider's defaults filled in."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def test_both_cluster_files_are_shipped():
    assert CLUSTER_FILES == ["cluster-aws.yaml", "cluster.yaml"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_passes_ray_validation(name):
    config = prepared(load(name))
    assert config["cluster_name"].startswith("returnn-ray")
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_unknown_top_level_key_is_rejected(name):
    config = load(name)
    config["setup_comands"] = ["echo typo"]  # a typo of setup_commands
    with pytest.raises(jsonschema.ValidationError, match="setup_comands"):
        prepared(config)


def test_unknown_auth_key_is_rejected():
    config = load("cluster.yaml")
    config["auth"]["ssh_key"] = "~/.ssh/id_rsa"
    with pytest.raises(jsonschema.ValidationError, match="ssh_key"):
        prepared(config)


def test_local_cluster_uses_the_listed_machines():
    raw = load("cluster.yaml")
    config = prepared(raw)
    assert raw["provider"]["type"] == "local"
    assert raw["provider"]["head_ip"] and raw["provider"]["worker_ips"]
    (node_type,) = config["available_node_types"].values()  # the local provider's single node type
    # Every listed worker is kept in the cluster (min = max = number of worker_ips).
    assert node_type["min_workers"] == node_type["max_workers"] == len(raw["provider"]["worker_ips"])
    assert set(raw["auth"]) == {"ssh_user", "ssh_private_key"}


def test_aws_cluster_has_gpu_workers_with_autoscaling_bounds():
    config = prepared(load("cluster-aws.yaml"))
    assert config["provider"]["type"] == "aws"
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    (gpu,) = workers.values()
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))  # EC2's GPU instance families
    assert 0 <= gpu["min_workers"] <= gpu["max_workers"] <= config["max_workers"]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_nodes_install_this_project_and_run_its_ray(name):
    config = prepared(load(name))
    assert config["file_mounts"]["~/returnn-ray"] == "."  # the repository, experiments/ included
    assert (ROOT / "experiments").is_dir() and (ROOT / "scripts" / "setup.sh").is_file()
    assert ".venv" in config["rsync_exclude"]  # each node builds its own environment
    for setup in ("head_setup_commands", "worker_setup_commands"):  # after prepare_config: setup_commands merged in
        assert "cd ~/returnn-ray && bash scripts/setup.sh" in config[setup]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if " start " in c]
        assert len(starts) == 1, config[key]
        assert "~/returnn-ray/.venv/bin/ray start" in starts[0]
        assert "RAY_AUTH_MODE=token" in starts[0]
        # idle Ray Data read-task processes survive between epochs (returnn_ray.cluster.start.worker_soft_limit)
        assert "RAY_num_workers_soft_limit=$((4 * $(nproc) + 8))" in starts[0]


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_head_keeps_dashboard_local_and_ships_the_auth_token(name):
    config = prepared(load(name))
    (start,) = [c for c in config["head_start_ray_commands"] if " start " in c]
    args = shlex.split(start.split(";")[-1])
    assert "--head" in args and "--port=6379" in args
    assert "--dashboard-host=127.0.0.1" in args
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in args
    assert not any(a.startswith("--num-gpus") for a in args)  # GPUs are detected on each node
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"



def test_readme_submits_jobs_only_where_the_shipped_dashboard_listens():
    # cluster.yaml binds the dashboard (the job API) to the head's 127.0.0.1: a `ray job submit` in
    # the README must go through `ray dashboard cluster.yaml`'s tunnel, not to http://<head>:8265.
    readme = (ROOT / "README.md").read_text()
    submits = re.findall(r"ray job submit[^\n]*--address\s+(\S+)", readme)
    assert submits, "the README shows no `ray job submit`"
    for address in submits:
        assert address.startswith("http://127.0.0.1:"), address
    assert "ray dashboard cluster.yaml" in readme


def test_the_ray_pin_admits_the_ray_the_tests_run_on_and_no_other_minor_version():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    (ray_req,) = [Requirement(d) for d in deps if Requirement(d).name == "ray"]
    installed = version("ray")
    major, minor = (int(x) for x in installed.split(".")[:2])
    assert ray_req.specifier.contains(installed), (ray_req, installed)
    for other in (f"{major}.{minor + 1}.0", f"{major}.{minor - 1}.0", f"{major + 1}.0.0"):
        assert not ray_req.specifier.contains(other), f"{ray_req} admits Ray {other}, which the tests never ran on"
