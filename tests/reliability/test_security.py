"""Security defaults: no arbitrary unpickling, loopback-only UIs, token auth kept on, no world-open
ports in cluster files, no secrets in the tracking store."""

from __future__ import annotations

import io
import os
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from distinception.config import from_dict
from distinception.ps import checkpoint as ckpt
from distinception.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "distinception"


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "shard-0.pt"
    torch.save({"flat": torch.zeros(3), "payload": _RunsCode(marker)}, path)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_state(str(path))
    assert "not a weights-only torch checkpoint" in str(err.value)
    assert "\n" not in str(err.value)
    assert not marker.exists()


def _package_sources() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"weights_only\s*=\s*False", "torch.load must never unpickle arbitrary objects"),
        (r"\bpickle\.loads?\(", "no pickle loading of files"),
        (r"\byaml\.load\(", "YAML is read with safe_load only"),
        (r"ALLOW_PICKLE_DESERIALIZATION\W+(true|1)\b", "MLflow's pickle guard is never lifted"),
        (r"RAY_AUTH_MODE\W+disabled", "Ray token auth stays on"),
        (r"include_dashboard\s*=\s*True", "the driver's local Ray starts no dashboard"),
        (r"0\.0\.0\.0", "nothing binds to every interface"),
    ],
)
def test_the_package_has_no_unsafe_loading_or_binding(pattern, why):
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p, text in _package_sources()
        for i, line in enumerate(text.splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not hits, f"{why}: {hits}"


def _calls(text: str, name: str) -> list[str]:
    """The full text of every `name(...)` call, parentheses balanced."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 0, m.end() - 1
        for i in range(m.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
        out.append(text[m.start() : i + 1])
    return out


def test_every_torch_load_is_weights_only():
    calls = [(p, c) for p, text in _package_sources() for c in _calls(text, "torch.load")]
    assert calls, "expected at least the checkpoint loader"
    for path, call in calls:
        assert "weights_only=True" in call, f"{path.relative_to(ROOT)}: {call}"


def test_a_logged_model_loads_and_a_tampered_one_is_refused(tmp_path):
    """Models are logged as torch.export archives; `tracking.load_model` loads them with
    MLflow's pickle guard on (MLflow's default allows pickle), so a record that would need a
    full unpickler is refused before anything runs."""
    import mlflow.pytorch
    import numpy as np
    from mlflow.exceptions import MlflowException

    from distinception.tracking import load_model

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    path = tmp_path / "model"
    mlflow.pytorch.save_model(
        model,
        str(path),
        serialization_format="pt2",
        input_example=np.zeros((2, 4), dtype=np.float32),
        pip_requirements=["torch"],
    )
    loaded = load_model(str(path))
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), model(x))

    marker = tmp_path / "pwned"
    archive = next(path.rglob("model.pt2"))
    payload = io.BytesIO()
    torch.save({"w": _RunsCode(marker)}, payload)
    with zipfile.ZipFile(archive, "a") as z:
        name = next(n for n in z.namelist() if "/data/" in n or n.endswith(".json"))
        z.writestr(name.rsplit("/", 1)[0] + "/payload", payload.getvalue())
    with pytest.raises(MlflowException, match="not a pickle-free payload"):
        load_model(str(path))
    assert not marker.exists()


def test_the_local_ray_keeps_token_auth_and_starts_no_dashboard(monkeypatch):
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from distinception.ps.session import init_ray

    assert not ray.is_initialized()
    root = tempfile.mkdtemp(prefix="sec-", dir="/tmp")  # Ray's socket paths must stay short
    monkeypatch.setenv("RAY_TMPDIR", root)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert init_ray(None)
    try:
        assert is_token_auth_enabled()
        node = ray._private.worker.global_worker.node
        assert not node.address_info.get("webui_url")
    finally:
        ray.shutdown()


def test_mlflow_ui_hint_binds_loopback():
    from distinception.tracking import ui_command

    assert ui_command("sqlite:////x/mlflow.db").endswith("--host 127.0.0.1")


def _shipped_text_files() -> list[Path]:
    skip = {".venv", ".git", "tests", "mlruns", "build"}
    out = []
    for p in ROOT.rglob("*"):
        if any(part in skip or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts):
            continue
        if p.is_file() and p.suffix in {".md", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt"}:
            out.append(p)
    return out


def test_docs_and_configs_start_servers_on_loopback_only():
    bad = re.compile(
        r"(--host[= ]0\.0\.0\.0|--dashboard-host[= ]0\.0\.0\.0|dashboard_host\W+0\.0\.0\.0"
        r"|RAY_AUTH_MODE\W+disabled)"
    )
    hits = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in _shipped_text_files()
        for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
        if bad.search(line)
    ]
    assert not hits, hits


# -- cluster files ---------------------------------------------------------------------------

WORLD = {"0.0.0.0/0", "::/0"}


def _world_rules(node, path="") -> list[tuple[str, dict]]:
    """Every mapping that opens something to the whole internet, with where it is."""
    found = []
    if isinstance(node, dict):
        values = [v for v in node.values() if isinstance(v, (str, list)) and _mentions_world(v)]
        if values:
            return [(path, node)]  # the rule itself; its CIDR entries are part of it
        for key, value in node.items():
            found += _world_rules(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _world_rules(value, f"{path}[{i}]")
    return found


def _mentions_world(value) -> bool:
    if isinstance(value, str):
        return value in WORLD
    return any(
        (isinstance(v, str) and v in WORLD)
        or (isinstance(v, dict) and any(x in WORLD for x in v.values() if isinstance(x, str)))
        for v in value
    )


def _ports(rule: dict) -> set[int] | None:
    """Ports a rule opens: AWS FromPort/ToPort or GCP `allowed[].ports`; None if all."""
    if "FromPort" in rule or "ToPort" in rule:
        lo, hi = int(rule.get("FromPort", -1)), int(rule.get("ToPort", -1))
        return None if lo < 0 or hi < 0 or hi - lo > 1000 else set(range(lo, hi + 1))
    ports: set[int] = set()
    for allowed in rule.get("allowed", rule.get("Allowed", [])) or []:
        spec = allowed.get("ports") if isinstance(allowed, dict) else None
        if not spec:
            return None
        for item in spec:
            lo, _, hi = str(item).partition("-")
            ports |= set(range(int(lo), int(hi or lo) + 1))
    return ports or None


CLOUD_FILES = sorted(
    p for p in (ROOT / "cluster").glob("*.y*ml") if "provider" in (p.read_text() or "")
)


def _is_cloud(path: Path) -> bool:
    doc = yaml.safe_load(path.read_text()) or {}
    return str((doc.get("provider") or {}).get("type", "")) in {"aws", "gcp", "azure"}


CLOUD_YAMLS = [p for p in CLOUD_FILES if _is_cloud(p)]


def test_both_cloud_cluster_files_are_checked():
    assert sorted(p.name for p in CLOUD_YAMLS) == ["aws.yaml", "gcp.yaml"]


@pytest.mark.parametrize("path", CLOUD_YAMLS, ids=lambda p: p.name)
def test_cluster_files_open_no_port_to_the_world_but_ssh(path):
    doc = yaml.safe_load(path.read_text())
    for where, rule in _world_rules(doc):
        assert _ports(rule) == {22}, f"{path.name}{where}: opens {_ports(rule) or 'all ports'}"
    text = path.read_text()
    assert "--dashboard-host=0.0.0.0" not in text and "RAY_AUTH_MODE=disabled" not in text


def _ray_default_aws_rules() -> tuple[list[dict], str]:
    """The inbound rules Ray's AWS launcher authorizes on a new security group besides the
    YAML's own `IpPermissions`, read from the installed Ray's source (importing it needs boto3):
    the SSH rule as its literal value, and the intra-cluster rule's source code."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("ray")
    source = Path(spec.origin).parent / "autoscaler" / "_private" / "aws" / "config.py"
    tree = ast.parse(source.read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    (ssh,) = [
        n for n in ast.walk(funcs["_create_default_ssh_inbound_rules"]) if isinstance(n, ast.Return)
    ]
    merged = ast.unparse(funcs["_create_default_inbound_rules"])
    assert "intracluster_rules" in merged and "ssh_rules" in merged and "extended_rules" in merged
    return ast.literal_eval(ssh.value), ast.unparse(
        funcs["_create_default_intracluster_inbound_rules"]
    )


def test_the_aws_security_group_ray_creates_from_our_yaml_opens_only_ssh_to_the_world():
    """What the security group will allow: Ray's SSH rule, its rule between the cluster's own
    groups, and whatever aws.yaml adds (nothing today)."""
    doc = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    group = doc["provider"]["security_group"]
    assert group["GroupName"] == "distinception-ray"
    ssh_rules, intracluster = _ray_default_aws_rules()
    # The intra-cluster rule names security groups only: no address range at all.
    assert "UserIdGroupPairs" in intracluster and "Cidr" not in intracluster
    rules = [*ssh_rules, *group.get("IpPermissions", [])]
    opened = [r for r in rules if _world_rules(r)]
    assert opened and all(_ports(r) == {22} for r in opened), opened


def _gcloud_rules(text: str) -> dict[str, dict]:
    """`gcloud compute firewall-rules create` commands (continued lines joined) as GCP rules;
    gcloud's default source range, when none is given, is the whole internet."""
    import shlex

    rules = {}
    for command in text.replace("\\\n", " ").splitlines():
        if not command.startswith("gcloud compute firewall-rules create "):
            continue
        argv = shlex.split(command)
        opts = dict(a[2:].split("=", 1) for a in argv[5:] if a.startswith("--") and "=" in a)
        allowed = []
        for item in opts["allow"].split(","):
            proto, _, ports = item.partition(":")
            allowed.append({"IPProtocol": proto, **({"ports": [ports]} if ports else {})})
        rules[argv[4]] = {
            "network": opts["network"],
            "sourceRanges": opts.get("source-ranges", "0.0.0.0/0").split(","),
            "allowed": allowed,
        }
    return rules


def test_the_gcp_network_the_yaml_uses_opens_only_ssh_to_the_world():
    """GCP firewalls live outside the cluster YAML: the network gcp.yaml puts every node on is
    created by the commands in cluster/README.md, so those commands are what is checked."""
    doc = yaml.safe_load((ROOT / "cluster" / "gcp.yaml").read_text())
    subnets = {
        nic["subnetwork"].rsplit("/", 1)[-1]
        for node in doc["available_node_types"].values()
        for nic in node["node_config"].get("networkInterfaces", [])
    }
    assert subnets == {"distinception"}, subnets  # every node type on the project's network
    rules = _gcloud_rules((ROOT / "cluster" / "README.md").read_text())
    assert set(rules) == {"distinception-ssh", "distinception-internal"}
    assert all(r["network"] == "distinception" for r in rules.values())
    world = {name: _ports(r) for name, r in rules.items() if _world_rules(r)}
    assert world == {"distinception-ssh": {22}}
    assert rules["distinception-internal"]["sourceRanges"] == ["10.10.0.0/20"]


def test_world_rule_detection_on_known_shapes():
    """The checker itself: SSH-only rules pass, anything wider is caught (AWS and GCP shapes)."""
    ssh = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    wide = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    dash = {"FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    gcp_ssh = {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}]}
    gcp_all = {"sourceRanges": ["0.0.0.0/0"], "allowed": [{"IPProtocol": "tcp"}]}
    inner = {"CidrIp": "10.0.0.0/16"}
    doc = {
        "provider": {"security_group": {"IpPermissions": [ssh, wide, dash]}},
        "x": [gcp_ssh, gcp_all, inner],
    }
    rules = {id(r): _ports(r) for _, r in _world_rules(doc)}
    assert inner not in [r for _, r in _world_rules(doc)]
    assert rules == {
        id(ssh): {22},
        id(wide): None,
        id(dash): {8265},
        id(gcp_ssh): {22},
        id(gcp_all): None,
    }


# -- secrets ---------------------------------------------------------------------------------


def test_credentials_in_uris_never_reach_the_tracking_store(mlflow_uri, tmp_path):
    from distinception.tracking import MlflowCallback, redact, ui_command

    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    path = f"s3://AKIAIOSFODNN7:{secret}@bucket/set?X-Amz-Signature={secret}"
    cfg = from_dict(
        {"data": {"path": path}, "tracking": {"tracking_uri": mlflow_uri, "log_model": False}},
        get_recipe("tiny"),
    )
    hooks = MlflowCallback(cfg)
    run_id = hooks.on_start(
        cfg, {"params": 1, "num_classes": 4, "train_examples": 1, "data_path": path}
    )
    client = MlflowClient(mlflow_uri)
    params = client.get_run(run_id).data.params
    assert params["data.path"] == "s3://AKIAIOSFODNN7:***@bucket/set?X-Amz-Signature=***"
    assert not [k for k, v in params.items() if secret in v]
    saved = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert secret not in Path(saved).read_text()
    assert redact(f"postgresql://u:{secret}@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact("sqlite:////a/b.db") == "sqlite:////a/b.db"
    client.set_terminated(run_id)
    assert secret not in ui_command(f"https://u:{secret}@mlflow.example")


# -- private files ---------------------------------------------------------------------------


def test_shared_memory_files_directories_and_doorbells_are_private(monkeypatch):
    """Weights, gradient slots, the lock file and the doorbell socket are 0600 in a 0700 job
    directory whatever the umask (0 here: any mode left to the default would show as 0777 or
    0666)."""
    import stat

    from distinception.ps.transport import shm

    if not shm.available():
        pytest.skip("needs fcntl (POSIX)")
    old = os.umask(0)
    directory = shm.job_dir()
    try:
        fd = shm.claim(directory)
        vector = shm.SharedVector(os.path.join(directory, "shard-0.f32"), 16, create=True)
        bell = shm.DoorbellServer(os.path.join(directory, "bell-0"), lambda request: {})
        modes = {
            name: stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            for name in os.listdir(directory)
        }
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert modes == {shm.LOCK: 0o600, "shard-0.f32": 0o600, "bell-0": 0o600}
        assert stat.S_ISSOCK(os.stat(os.path.join(directory, "bell-0")).st_mode)
        bell.close()
        vector.close()
        os.close(fd)
    finally:
        os.umask(old)
        shm.remove(directory)
