"""Advice from the simulator: the PS nodes that keep N replicas fed, pushing less often when a
shard's fixed cost is what saturates, the replicas a cluster YAML's PS nodes hold, and the
`distinception plan` command as a user types it."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from as_typed import distinception

from distinception.config import ConfigError
from distinception.plan.advise import max_replicas, plan_replicas, read_cluster
from distinception.plan.profiles import load_profile, shipped_profiles
from distinception.plan.sim import Profile, Setup, simulate

ROOT = Path(__file__).resolve().parents[3]
#: Bound by the PS NICs only: 4 MB on the wire per push, no apply cost, 0.1 s steps, so one
#: replica moves 40 MB/s each way and a 10 Gb/s NIC (1.25 GB/s) feeds about 31 of them.
NIC_BOUND = Profile(
    "nic",
    step_s=0.1,
    batch=32,
    params=1_000_000,
    apply_fixed_s=0.0,
    apply_s_per_mib=0.0,
    rpc_s=0.0,
)


def test_the_fewest_ps_nodes_whose_nics_feed_the_replicas():
    plan = plan_replicas(NIC_BOUND, 100, Setup(replicas=100, link_gbps=10), cores_per_ps_node=4)
    # 100 replicas need 4 GB/s each way: 4 NICs of 1.25 GB/s, the first power of two past 3.2.
    assert plan.met and (plan.setup.ps_nodes, plan.setup.shards, plan.setup.n_push) == (4, 16, 1)
    fewer = dataclasses.replace(plan.setup, ps_nodes=2, shards=8)
    assert simulate(NIC_BOUND, fewer).efficiency < 0.9
    assert plan.saturates_first in ("PS NIC in", "PS NIC out")


def test_a_shards_fixed_cost_per_push_is_met_by_pushing_less_often():
    # 1 ms per push whatever the slice: 1,000 pushes/s at most, on any number of shards. 200
    # replicas at 10 steps/s offer 2,000: every 4th step is the first that fits at 90%.
    profile = dataclasses.replace(NIC_BOUND, apply_fixed_s=0.001, params=1000)
    plan = plan_replicas(profile, 200, Setup(replicas=200, link_gbps=10), cores_per_ps_node=4)
    assert plan.met and plan.setup.n_push == 4 and plan.setup.ps_nodes == 1
    assert plan.result.staleness_stats()["mean"] > 0


def test_the_most_replicas_some_ps_nodes_hold():
    most, broke = max_replicas(NIC_BOUND, Setup(replicas=1, link_gbps=10))
    # The NIC feeds 31.25 replicas; 90% of ideal allows 31.25 / 0.9 = 34.7 to share it.
    assert 33 <= most <= 34
    assert simulate(NIC_BOUND, Setup(replicas=most, link_gbps=10)).efficiency >= 0.9
    assert broke.setup.replicas == most + 1 and not broke.met


def test_a_cluster_yaml_names_its_ps_nodes_and_replicas():
    aws = read_cluster(str(ROOT / "cluster" / "aws.yaml"))
    # The head (8 CPUs, `ps`) holds the shards; 8 CPU nodes of 4 replicas and 8 GPU nodes of 1.
    assert (aws.ps_nodes, aws.cores_per_ps_node, aws.max_replicas) == (1, 8, 40)
    local = read_cluster(str(ROOT / "cluster" / "local.yaml"))
    assert local.ps_nodes == 1 and local.max_replicas >= 1


def test_ps_nodes_set_in_a_cluster_yaml_add_to_what_it_holds(tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    config["available_node_types"]["ps_node"].update(min_workers=5, max_workers=5)
    wider = tmp_path / "aws-6ps.yaml"
    wider.write_text(yaml.safe_dump(config))
    spec = read_cluster(str(wider))
    assert (spec.ps_nodes, spec.cores_per_ps_node) == (6, 8)  # the head and 5 PS nodes
    profile = load_profile("h100-paper")
    one, _ = max_replicas(profile, Setup(replicas=1, shards=8, ps_nodes=1, link_gbps=25))
    six, _ = max_replicas(profile, Setup(replicas=1, shards=48, ps_nodes=6, link_gbps=25))
    assert six >= 5 * one  # the NICs add up


def test_a_yaml_with_no_ps_node_or_no_node_types_is_one_line(tmp_path):
    bare = tmp_path / "bare.yaml"
    bare.write_text("cluster_name: x\n")
    with pytest.raises(ConfigError, match="expected a Ray cluster YAML with available_node_types"):
        read_cluster(str(bare))
    nops = tmp_path / "nops.yaml"
    nops.write_text("available_node_types: {w: {resources: {CPU: 4}, max_workers: 2}}\n")
    with pytest.raises(ConfigError, match="no node type has a `ps` resource"):
        read_cluster(str(nops))


def test_shipped_profiles_load_and_bad_ones_are_one_line(tmp_path):
    assert {"h100-paper", "cpu-demo"} <= set(shipped_profiles())
    for name in shipped_profiles():
        assert load_profile(name).source  # each names where its figures come from
    with pytest.raises(ConfigError, match="--profile='nope': expected a profile file or one of"):
        load_profile("nope")
    bad = tmp_path / "p.yaml"
    bad.write_text("name: x\nstep_s: 0.1\nbatch: 8\nparams: 10\nspeed: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        load_profile(str(bad))
    bad.write_text(
        "step_s: -1\nbatch: 8\nparams: 10\napply_fixed_s: 0\napply_s_per_mib: 0\nrpc_s: 0\n"
    )
    with pytest.raises(ConfigError, match="step_s=-1: expected a number >= 0"):
        load_profile(str(bad))


def test_plan_as_the_readmes_type_it():
    section = (ROOT / "README.md").read_text().split("## Planning a cluster", 1)[1]
    (block,) = re.findall(r"```\n(.*?)```", section.split("\n## ", 1)[0], flags=re.DOTALL)
    commands = [line for line in block.splitlines() if line.startswith("distinception plan")]
    cluster = (ROOT / "cluster" / "README.md").read_text()
    commands += re.findall(r"^distinception plan .*$", cluster, flags=re.MULTILINE)
    assert len(commands) == 3
    for line in commands:
        proc = distinception(*line.split()[1:], cwd=ROOT, timeout=300)
        assert "| replicas | link Gb/s | PS nodes |" in proc.stdout, proc.stdout


def test_plan_json_for_a_cluster_yaml():
    proc = distinception(
        *("plan", "--cluster", "cluster/aws.yaml", "--link-gbps", "10", "--json"), cwd=ROOT
    )
    out = json.loads(proc.stdout)
    (plan,) = out["plans"]
    assert plan["replicas"] == 40 and plan["met"] and plan["efficiency"] >= 0.9
    (holds,) = out["cluster"]["holds"]
    # One head NIC of 10 Gb/s against the faithful model's 27 MB per push and per read at
    # 14 steps/s per H100 replica: about 3 GB/s... of which the head carries 1.25.
    assert 1 <= holds["max_replicas"] < 8


def test_plan_calibrates_a_profile_here_and_saves_it(tmp_path):
    saved = tmp_path / "tiny.yaml"
    proc = distinception(
        *("plan", "--calibrate", "--recipe", "tiny", "--replicas", "2,4"),
        *("--link-gbps", "10", "--save-profile", str(saved)),
    )
    profile = load_profile(str(saved))
    assert profile.batch == 16 and profile.params > 100_000 and profile.step_s > 0
    assert profile.apply_s_per_mib > 0 and "plan --calibrate" in profile.source
    assert f"profile {profile.name}:" in proc.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--replicas", "0"], "--replicas='0': expected comma-separated integers >= 1"),
        (["--link-gbps", "fast"], "--link-gbps='fast': expected comma-separated numbers"),
        (["--target", "1.5"], "--target=1.5: expected a share in (0, 1]"),
        (["--set", "optim.lr=0.1"], "--recipe, --config and --set choose the job --calibrate"),
        (["--profile", "nope"], "--profile='nope': expected a profile file or one of"),
        (["--stragglers", "2"], "--stragglers=2.0: expected a share in [0, 1]"),
        (["--straggler-factor", "0.5"], "--straggler-factor=0.5: expected a number >= 1"),
        (["--restart-s", "0"], "--restart-s=0.0: expected a number > 0"),
        (["--step-cv", "nan"], "--step-cv=nan: expected a number in [0, 10]"),
    ],
)
def test_plan_rejects_bad_arguments_in_one_line(argv, message):
    proc = distinception("plan", *argv, code=2, timeout=120)
    assert message in proc.stderr and proc.stderr.strip().count("\n") <= 1, proc.stderr


def test_planning_loads_neither_torch_nor_ray_nor_mlflow(tmp_path):
    """A plan runs on any laptop, in seconds, and draws its plot: only `--calibrate` needs
    torch."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from distinception.cli.plan import _plot\n"
        "from distinception.plan.advise import plan_replicas\n"
        "from distinception.plan.profiles import load_profile\n"
        "from distinception.plan.sim import Setup\n"
        "plan = plan_replicas(load_profile('h100-paper'), 16, Setup(replicas=16), 8)\n"
        f"_plot({str(tmp_path / 'plan.png')!r}, [plan.row()], 'h100-paper', 0.9)\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]", proc.stdout
    assert (tmp_path / "plan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_plot_draws_ps_nodes_against_replicas_per_link(tmp_path):
    plot = tmp_path / "plan.png"
    args = ("--replicas", "8,16", "--link-gbps", "10,100", "--plot", str(plot))
    proc = distinception("plan", *args, timeout=120)
    assert f"plot: {plot}" in proc.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size < 300_000
