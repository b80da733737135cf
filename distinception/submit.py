"""`distinception submit` and `distinception jobs`: job specs sent to a Ray cluster's Jobs API.

A job spec (jobs/*.yaml) is a command line plus what it needs around it: the working directory
shipped with it, the pinned requirements put in its runtime env, environment variables and the
resources of its driver. Submission goes through Ray's Job Submission SDK with the cluster's
token, so token authentication stays on; the MLflow tracking URI of the caller is passed on.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distinception.config import ConfigError, load_section
from distinception.uris import redact

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: Never shipped with a job, whatever the spec says: environments, stores, caches.
ALWAYS_EXCLUDE = (".venv", ".git", "mlruns", "checkpoints", "__pycache__", "*.egg-info")

TOKEN_HELP = (
    "set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it, "
    "or put it in ~/.ray/auth_token (for clusters made from cluster/*.yaml that is the token "
    "`ray get-auth-token --generate` wrote there before `ray up`)"
)


class SubmitError(ConfigError):
    """A job could not be submitted or queried; the message is one line for the user."""


@dataclass(frozen=True)
class JobSpec:
    """One job: `entrypoint` runs in `working_dir` on the cluster with `env_vars` set."""

    name: str
    entrypoint: str
    working_dir: str
    requirements: str = ""
    excludes: tuple[str, ...] = ()
    env_vars: dict[str, str] = field(default_factory=dict)
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)
    description: str = ""


def _amount(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{name}={value!r}: expected a number >= 0")
    return float(value)


@dataclass(frozen=True)
class RuntimeEnvDoc:
    """A spec's `runtime_env:` as written (paths relative to the spec file)."""

    working_dir: str = "."
    requirements: str = ""
    excludes: tuple[str, ...] = ()
    env_vars: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        excludes = self.excludes if self.excludes is not None else ()
        if not isinstance(excludes, (list, tuple)) or not all(isinstance(x, str) for x in excludes):
            raise ConfigError(f"excludes={excludes!r}: expected a list of path patterns")
        object.__setattr__(self, "excludes", tuple(excludes))
        env_vars = self.env_vars if self.env_vars is not None else {}
        if not isinstance(env_vars, Mapping):
            raise ConfigError(f"env_vars={env_vars!r}: expected a mapping")
        object.__setattr__(self, "env_vars", {str(k): str(v) for k, v in env_vars.items()})


@dataclass(frozen=True)
class DriverResourcesDoc:
    """A spec's `resources:`: what the driver process itself holds on the cluster."""

    num_cpus: float = 0.0
    num_gpus: float = 0.0
    custom: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _amount("num_cpus", self.num_cpus)
        _amount("num_gpus", self.num_gpus)
        custom = self.custom if self.custom is not None else {}
        if not isinstance(custom, Mapping):
            raise ConfigError(f"custom={custom!r}: expected a mapping")
        custom = {str(k): _amount(f"custom.{k}", v) for k, v in custom.items()}
        object.__setattr__(self, "custom", custom)


@dataclass(frozen=True)
class JobSpecDoc:
    """A job spec file as written, checked by the same loader as run configs."""

    entrypoint: str = ""
    name: str = ""
    description: str = ""
    runtime_env: RuntimeEnvDoc = field(default_factory=RuntimeEnvDoc)
    resources: DriverResourcesDoc = field(default_factory=DriverResourcesDoc)

    def __post_init__(self) -> None:
        if not self.entrypoint.strip():
            raise ConfigError(f"entrypoint={self.entrypoint!r}: expected a command line")


def load_spec(path: str | Path) -> JobSpec:
    """Read and check a job spec; relative paths in it are relative to the spec file."""
    p = Path(path)
    if not p.is_file():
        raise SubmitError(f"job spec {str(path)!r}: expected an existing YAML file")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError:
        raise SubmitError(f"job spec {str(path)!r}: not valid YAML") from None
    if not isinstance(doc, Mapping) or "entrypoint" not in doc:
        raise SubmitError(
            f"job spec {str(path)!r}: expected a mapping with an entrypoint (the command to run);"
            " `train --config` files are not job specs"
        )
    try:
        spec = load_section("", JobSpecDoc, doc)
    except ConfigError as err:
        raise SubmitError(f"job spec {str(path)!r}: {err}") from None
    runtime = spec.runtime_env
    base = p.resolve().parent
    working_dir = (base / runtime.working_dir).resolve()
    if not working_dir.is_dir():
        raise SubmitError(f"runtime_env.working_dir={str(working_dir)!r}: expected a directory")
    requirements = ""
    if runtime.requirements:
        req = (base / runtime.requirements).resolve()
        if not req.is_file():
            raise SubmitError(f"runtime_env.requirements={str(req)!r}: expected a file")
        requirements = str(req)
    return JobSpec(
        name=spec.name or p.stem,
        description=spec.description,
        entrypoint=" ".join(spec.entrypoint.split()),
        working_dir=str(working_dir),
        requirements=requirements,
        excludes=runtime.excludes,
        env_vars=dict(runtime.env_vars),
        num_cpus=spec.resources.num_cpus,
        num_gpus=spec.resources.num_gpus,
        resources=dict(spec.resources.custom),
    )


def read_requirements(path: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower()


def runtime_env(
    spec: JobSpec, *, with_requirements: bool = True, tracking_uri: str | None = None
) -> dict[str, Any]:
    """The Ray runtime env of `spec`: code, pinned requirements, environment."""
    env = dict(spec.env_vars)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    out: dict[str, Any] = {
        "working_dir": spec.working_dir,
        "excludes": sorted({*ALWAYS_EXCLUDE, *spec.excludes}),
        "env_vars": env,
    }
    if with_requirements and spec.requirements:
        # Ray itself is the cluster's and must match it: never reinstalled inside a job. pip_check
        # off: the pins are exact, and the nodes' image may carry unrelated packages.
        packages = [r for r in read_requirements(spec.requirements) if _name(r) != "ray"]
        out["pip"] = {"packages": packages, "pip_check": False}
    return out


def default_address() -> str:
    """The Jobs API: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, else the forwarded local port."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(var, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def find_token() -> str:
    """The cluster's token, looked up the way Ray does: env, file named in env, ~/.ray."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [Path(path).expanduser()] if path else []
    candidates.append(Path.home() / ".ray" / "auth_token")
    for candidate in candidates:
        if candidate.is_file() and candidate.read_text().strip():
            return candidate.read_text().strip()
    raise SubmitError("no Ray auth token found: " + TOKEN_HELP)


def _explain(address: str, err: BaseException) -> SubmitError:
    text = " ".join(str(err).split())
    if "401" in text or "Unauthorized" in text:
        return SubmitError(f"{address}: the cluster wants a token: " + TOKEN_HELP)
    if "403" in text or "Forbidden" in text:
        return SubmitError(f"{address}: the cluster refused the token: " + TOKEN_HELP)
    if isinstance(err, ConnectionError) or "connect" in text.lower():
        return SubmitError(
            f"--address={address}: no Ray Jobs API answers there; expected the head's dashboard "
            "port, e.g. http://127.0.0.1:8265 while `ray dashboard cluster/aws.yaml` forwards it"
        )
    return SubmitError(f"{address}: {text[:300]}")


class Jobs:
    """A Job Submission client for one cluster, with user-sized errors."""

    def __init__(self, address: str | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = address or default_address()
        headers = {"Authorization": f"Bearer {find_token()}"}
        try:
            self.client = JobSubmissionClient(self.address, headers=headers)
        except Exception as err:
            raise _explain(self.address, err) from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except Exception as err:
            raise _explain(self.address, err) from None

    def submit(
        self,
        spec: JobSpec,
        extra_args: Sequence[str] = (),
        *,
        with_requirements: bool = True,
        tracking_uri: str | None = None,
    ) -> str:
        entrypoint = spec.entrypoint
        if extra_args:
            entrypoint += " " + shlex.join(extra_args)
        return self._call(
            "submit_job",
            entrypoint=entrypoint,
            submission_id=f"{spec.name}-{uuid.uuid4().hex[:8]}",
            runtime_env=runtime_env(
                spec, with_requirements=with_requirements, tracking_uri=tracking_uri
            ),
            metadata={"spec": spec.name},
            entrypoint_num_cpus=spec.num_cpus or None,
            entrypoint_num_gpus=spec.num_gpus or None,
            entrypoint_resources=spec.resources or None,
        )

    def status(self, job_id: str) -> str:
        return str(self._call("get_job_status", job_id).value)

    def info(self, job_id: str) -> Any:
        return self._call("get_job_info", job_id)

    def logs(self, job_id: str) -> str:
        """The job's output so far, with secrets in URIs hidden (the first line repeats the
        command, whose data paths may carry credentials)."""
        return redact(self._call("get_job_logs", job_id))

    def stop(self, job_id: str) -> bool:
        return bool(self._call("stop_job", job_id))

    def list(self) -> list[Any]:
        return sorted(self._call("list_jobs"), key=lambda j: j.start_time or 0)

    def follow(self, job_id: str, out: Any) -> str:
        """Stream the job's logs to `out` until it ends; return its final status."""

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                out.write(redact(lines))
                out.flush()

        try:
            asyncio.run(tail())
        except Exception as err:
            raise _explain(self.address, err) from None
        # The log stream closes as the job ends; the status may lag by a moment.
        for _ in range(60):
            status = self.status(job_id)
            if status in TERMINAL:
                return status
            time.sleep(1)
        return status


def format_jobs(jobs: list[Any]) -> str:
    rows = [("SUBMISSION ID", "STATUS", "STARTED (UTC)", "ENTRYPOINT")]
    for job in jobs:
        started = (
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(job.start_time / 1000))
            if job.start_time
            else "-"
        )
        command = redact(job.entrypoint)
        entry = command if len(command) <= 60 else command[:57] + "..."
        rows.append((job.submission_id or job.job_id or "-", str(job.status), started, entry))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3]
        for r in rows
    )


__all__ = [
    "JobSpec",
    "Jobs",
    "SubmitError",
    "default_address",
    "find_token",
    "format_jobs",
    "load_spec",
    "runtime_env",
]
