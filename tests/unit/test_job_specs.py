"""Job specs: every shipped spec loads and its command parses; runtime env and token lookup."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from distinception.cli import build_parser
from distinception.cli.jobs import _job_config
from distinception.config import load_yaml
from distinception.recipes import get_recipe
from distinception.submit import SubmitError, find_token, load_spec, runtime_env

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "jobs").glob("*.yaml"))


def _subcommands() -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return set(sub.choices)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_every_job_spec_loads_and_runs_a_distinception_command(path):
    spec = load_spec(path)
    assert Path(spec.working_dir) == ROOT
    assert spec.requirements == str(ROOT / "cluster" / "requirements.txt")
    argv = shlex.split(spec.entrypoint)
    assert argv[0] == "distinception"
    assert argv[1] in _subcommands(), f"{path.name}: unknown subcommand {argv[1]!r}"
    if argv[1:3] == ["data", "import"]:
        # The tree and --out come after `--` at submission.
        args = build_parser().parse_args([*argv[1:], "s3://b/raw", "--out", "s3://b/set"])
        assert (args.engine, args.address) == ("ray", "auto")
        return
    args = build_parser().parse_args(argv[1:])
    cfg = _job_config(args)  # every --set in the spec is a valid value
    if argv[1] == "train":
        assert args.address == "auto"  # joins the job's cluster instead of starting a Ray
        if cfg.placement.elastic:
            assert cfg.placement.replica_resources == {"replica": 1.0}
            assert cfg.placement.shard_resources == {"ps": 1.0}


def test_the_paper_job_trains_the_faithful_model_at_224_on_gpus():
    args = build_parser().parse_args(
        shlex.split(load_spec(ROOT / "jobs/train-paper-gpu.yaml").entrypoint)[1:]
    )
    cfg = _job_config(args)
    assert (cfg.model.variant, cfg.model.input_size) == ("faithful", 224)
    assert cfg.placement.replica_gpus == 1.0
    assert cfg.placement.elastic and cfg.ps.num_replicas > cfg.placement.min_replicas


@pytest.mark.parametrize("path", sorted((ROOT / "jobs" / "configs").glob("*.yaml")))
def test_train_configs_still_load(path):
    assert load_yaml(path).name


def test_the_demo_file_is_the_demo_recipe():
    # The file is the demo recipe written out for users to copy and edit: it must not drift.
    assert load_yaml(ROOT / "jobs" / "configs" / "demo.yaml") == get_recipe("demo")


def test_runtime_env_carries_code_pins_and_tracking_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    spec = load_spec(ROOT / "jobs" / "train.yaml")
    env = runtime_env(spec)
    assert env["working_dir"] == str(ROOT)
    assert "torch==2.14.1" in env["pip"]["packages"]
    assert not any(p.startswith("ray") for p in env["pip"]["packages"])  # the cluster's own
    assert ".venv" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    bare = runtime_env(spec, with_requirements=False, tracking_uri="sqlite:///x.db")
    assert "pip" not in bare and bare["env_vars"]["MLFLOW_TRACKING_URI"] == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("model: {}\n", "expected a mapping with an entrypoint"),
        ("entrypoint: ''\n", "entrypoint='': expected a command line"),
        ("entrypoint: x\nruntime: {}\n", "runtime: unknown key (did you mean 'runtime_env'?)"),
        ("entrypoint: x\nruntime_env: {workdir: .}\n", "runtime_env.workdir: unknown key"),
        ("entrypoint: x\nresources: {num_cpus: -1}\n", "resources.num_cpus=-1"),
        ("entrypoint: x\nruntime_env: {requirements: nope.txt}\n", "expected a file"),
        ("entrypoint: x\nruntime_env: {excludes: data/}\n", "expected a list of path patterns"),
        ("entrypoint: x\nruntime_env: {env_vars: [A]}\n", "runtime_env.env_vars=['A']"),
        ("entrypoint: x\nresources: {custom: {ps: -2}}\n", "resources.custom.ps=-2: expected"),
        ("entrypoint: [a, b]\n", "entrypoint=['a', 'b']: expected a string"),
    ],
)
def test_bad_specs_fail_with_one_line(tmp_path, doc, message):
    path = tmp_path / "job.yaml"
    path.write_text(doc)
    with pytest.raises(SubmitError, match=None) as err:
        load_spec(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_token_lookup_follows_rays_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(SubmitError, match="RAY_AUTH_TOKEN_PATH"):
        find_token()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert find_token() == "home"
    (tmp_path / "t").write_text("file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert find_token() == "file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert find_token() == "env"
