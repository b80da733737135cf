"""Run names a user sees in the MLflow UI when they did not choose one, and the machine's
metrics beside the run's."""

import pytest
import torch

from distinception.config import from_dict
from distinception.recipes import get_recipe
from distinception.tracking import chart_metrics, chart_name, default_run_name


def test_a_default_run_name_says_recipe_data_and_model():
    demo = get_recipe("demo")
    builtin = "/home/u/.cache/distinception/generated-v3-c10-n500-v100-s64-seed0-74abe184"
    assert default_run_name(demo, builtin) == "demo-builtin-bn0.25-64px"
    other = from_dict({"model": {"width": 1.0, "input_size": 32}}, demo)
    assert default_run_name(other, "s3://bucket/flowers/") == "demo-flowers-bn1-32px"
    digits = get_recipe("digits")
    assert default_run_name(digits, "/x/digits") == "digits-bn0.5-32px"
    # Another arch is named by its builder, with a width only where it has one.
    resnet = from_dict({"model": {"arch": "torchvision:resnet18", "width": 1.0}}, digits)
    assert default_run_name(resnet, "/x/digits") == "digits-resnet18-32px"
    mobile = from_dict({"model": {"arch": "torchvision:mobilenet_v3_small"}}, digits)
    assert default_run_name(mobile, "/x/digits") == "digits-mobilenet_v3_small0.5-32px"


def test_metrics_that_belong_together_share_a_prefix():
    assert chart_name("loss") == "train/loss"
    assert chart_name("lr") == "train/lr"
    assert chart_name("polyak_top1_error") == "val/polyak_top1_error"
    assert chart_name("final_raw_top5_error") == "val/final_raw_top5_error"
    assert chart_name("staleness_p95") == "ps/staleness_p95"
    assert chart_name("replicas") == "ps/replicas"
    assert chart_name("fault_shard_restarts") == "faults/shard_restarts"
    assert chart_name("system/cpu_utilization_percentage") == "system/cpu_utilization_percentage"


def test_the_headline_error_is_the_served_weights():
    m = {"polyak_top1_error": 0.1, "raw_top1_error": 0.3, "polyak_top5_error": 0.0}
    assert chart_metrics(m, polyak=True)["val/top1_error"] == 0.1
    assert chart_metrics(m, polyak=False)["val/top1_error"] == 0.3
    assert "val/top5_error" not in chart_metrics(m, polyak=False)  # no raw top-5 reported
    final = chart_metrics({"final_polyak_top1_error": 0.2, "loss": 1.0}, polyak=True)
    assert final == {
        "val/final_polyak_top1_error": 0.2,
        "val/final_top1_error": 0.2,
        "train/loss": 1.0,
    }


def test_the_gpu_monitor_finds_its_library_and_the_system_monitor_starts(tmp_path):
    """MLflow logs GPU metrics only when `pynvml` (nvidia-ml-py) imports. Without it the GPU
    monitor raises ImportError on any machine; with it, a machine without a GPU fails later,
    at NVML's start, and the system monitor goes on with CPU, disk and network."""
    import mlflow
    import pynvml  # noqa: F401 - a runtime dependency, whether or not a GPU is here
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    try:
        GPUMonitor()
    except RuntimeError as err:  # no GPU or no driver here
        assert "NVML" in str(err), err
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = mlflow.MlflowClient(uri).create_run("0")
    monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=uri)
    assert {type(m).__name__ for m in monitor.monitors} >= {"CPUMonitor", "DiskMonitor"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; this machine has none")
def test_gpu_metrics_reach_the_run_where_a_gpu_is(tmp_path, monkeypatch):
    import time

    import mlflow

    from distinception.config import apply_overrides
    from distinception.tracking import MlflowCallback

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    hooks = MlflowCallback(apply_overrides(get_recipe("tiny"), [f"tracking.tracking_uri={uri}"]))
    hooks.run_id = client.create_run("0").info.run_id
    hooks._watch_system()
    time.sleep(3)
    hooks._unwatch_system()
    metrics = client.get_run(hooks.run_id).data.metrics
    assert any(k.startswith("system/gpu_0_") for k in metrics), sorted(metrics)


def test_runs_that_link_one_data_set_at_once_all_get_it(tmp_path, mlflow_uri):
    """A sweep's trials start together and link the same data set: MLflow's store inserts a
    missing set in two steps, so without the retry some of them failed on its unique key
    (a sweep trial in CI; here 7 to 11 of 40 before the change)."""
    import threading

    from mlflow.tracking import MlflowClient

    from distinception.data.shards import DatasetWriter
    from distinception.tracking.job import dataset_input, log_dataset_input

    data = str(tmp_path / "set")
    with DatasetWriter(data, ["a", "b"]) as writer:
        for i in range(4):
            writer.write("train", f"img{i}".encode(), i % 2, f"k{i}")
    dataset = dataset_input(data)
    client = MlflowClient(mlflow_uri)
    errors: list[BaseException] = []
    runs = []
    for round_ in range(5):  # a new experiment each time: the set is missing from it again
        experiment = client.create_experiment(f"linking-{round_}")
        ids = [client.create_run(experiment).info.run_id for _ in range(8)]
        runs += ids
        start = threading.Barrier(len(ids))

        def link(run_id: str, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                log_dataset_input(MlflowClient(mlflow_uri), run_id, dataset)
            except BaseException as err:  # counted, then reported below
                errors.append(err)

        threads = [threading.Thread(target=link, args=(r,)) for r in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} of {len(runs)} failed: {str(errors[0])[:200]}"
    for run_id in runs:
        (linked,) = client.get_run(run_id).inputs.dataset_inputs
        assert linked.dataset.digest == dataset.dataset.digest


def test_jobs_started_together_on_a_new_store_share_one_experiment(tmp_path):
    """Each job looks its experiment up and creates it when missing: started together, all
    but one find it missing and then fail to create it, unless they take the one that won."""
    import threading

    from distinception.tracking.store import setup

    for round_ in range(5):
        uri = f"sqlite:///{tmp_path}/store-{round_}/mlflow.db"
        cfg = from_dict({"tracking": {"tracking_uri": uri}}, get_recipe("tiny"))
        setup(cfg)  # the tables made once, as the session's first job makes them
        cfg = from_dict({"tracking": {"experiment": "together"}}, cfg)
        start = threading.Barrier(8)
        ids: list[str] = []
        errors: list[BaseException] = []

        def job(start: threading.Barrier = start, cfg=cfg, ids=ids, errors=errors) -> None:
            start.wait()
            try:
                ids.append(setup(cfg))
            except BaseException as err:  # counted, then reported below
                errors.append(err)

        threads = [threading.Thread(target=job) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"{len(errors)} of 8 failed: {str(errors[0])[:200]}"
        assert len(set(ids)) == 1, ids
