"""The cluster launcher files, checked offline with Ray's own loader and schema (never `ray up`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CLOUD = ["aws.yaml", "gcp.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_every_cluster_file_passes_rays_validation(path):
    config = yaml.safe_load(path.read_text())
    if config["provider"]["type"] == "fake_multinode":
        # The wheel lacks this provider's defaults file, so it cannot be merged; the file is
        # complete on its own, which is what `ray start --autoscaling-config` needs.
        validate_config(config)
    else:
        validate_config(prepare_config(config))


@pytest.mark.parametrize("name", CLOUD)
def test_shards_go_to_the_head_and_replicas_to_autoscaled_workers(name):
    config = load(name)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("ps", 0) >= 1 and "replica" not in head["resources"]
    workers = {k: v for k, v in types.items() if k not in (config["head_node_type"], "ps_node")}
    assert {"cpu_replica", "gpu_replica"} <= set(workers)
    for worker in workers.values():
        assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
        assert worker["resources"]["replica"] >= 1 and "ps" not in worker["resources"]
    # PS nodes beside the head: off until a user sets their count, and never replicas' nodes.
    ps_node = types["ps_node"]
    assert ps_node["min_workers"] == ps_node["max_workers"] == 0
    assert ps_node["resources"]["ps"] >= 1 and "replica" not in ps_node["resources"]
    assert workers["gpu_replica"]["resources"]["GPU"] == 1
    assert "GPU" not in workers["cpu_replica"]["resources"]


def _spot(node_config: dict) -> bool:
    market = node_config.get("InstanceMarketOptions", {}).get("MarketType")
    scheduling = node_config.get("scheduling", [])
    return market == "spot" or any(s.get("preemptible") for s in scheduling)


@pytest.mark.parametrize("name", CLOUD)
def test_replica_workers_are_spot_and_shard_nodes_are_not(name):
    config = load(name)
    # The nodes that hold shards (the head, PS nodes) are never reclaimed; replicas' nodes are.
    for key, node_type in config["available_node_types"].items():
        assert _spot(node_type["node_config"]) == ("ps" not in node_type["resources"]), key


@pytest.mark.parametrize("name", CLOUD)
def test_nodes_install_the_pinned_project_and_keep_token_auth(name):
    config = load(name)
    setup = " ".join(config["setup_commands"])
    assert "cluster/requirements.txt" in setup and "-e ~/distinception" in setup
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    assert "mlflow server --host 127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    assert ".venv" in config["rsync_exclude"]


def test_aws_opens_nothing_but_ssh():
    # Ray's security group allows the cluster's own nodes and SSH; extra rules would add ports.
    assert load("aws.yaml")["provider"]["security_group"]["IpPermissions"] == []


def test_gcp_nodes_sit_on_the_ssh_only_network():
    for node_type in load("gcp.yaml")["available_node_types"].values():
        (nic,) = node_type["node_config"]["networkInterfaces"]
        assert nic["subnetwork"].endswith("/subnetworks/distinception")


def test_pinned_requirements_satisfy_pyproject():
    declared = {
        Requirement(r).name: Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    lines = (CLUSTER / "requirements.txt").read_text().splitlines()
    pinned = [Requirement(x) for x in lines if x.strip() and not x.startswith("#")]
    assert {r.name for r in pinned} == set(declared)
    for req in pinned:
        (spec,) = req.specifier
        assert spec.operator == "==", f"{req} is not pinned"
        assert declared[req.name].specifier.contains(spec.version), f"{req} vs pyproject"
        assert req.extras == declared[req.name].extras
