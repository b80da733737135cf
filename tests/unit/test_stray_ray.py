"""A Ray asked for from a thread other than a test worker's main one is refused and reported,
and Ray's APIs no longer start one on first use (see tests/stray_ray.py)."""

from __future__ import annotations

import threading

import pytest
import ray
from stray_ray import StrayRayWarning


@pytest.fixture
def no_ray():
    assert not ray.is_initialized(), "needs a process with no Ray running"
    yield
    if ray.is_initialized():  # the guard failed: do not leave a Ray that dies with its thread
        ray.shutdown()


def test_ray_init_from_another_thread_is_refused_and_names_the_thread_and_the_test(no_ray):
    errors: list[str] = []

    def start() -> None:
        try:
            ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        except RuntimeError as err:
            errors.append(str(err))

    with pytest.warns(StrayRayWarning) as warned:
        thread = threading.Thread(target=start, name="stray")
        thread.start()
        thread.join()
    assert not ray.is_initialized()
    (message,) = [str(w.message) for w in warned]
    assert "thread 'stray'" in message and "test_stray_ray.py::test_ray_init_from" in message
    assert "in start" in message  # the stack of the call, to find the code that made it
    assert errors and errors[0] == message.split("\n", 1)[0]


def test_a_ray_api_used_with_no_ray_running_raises_instead_of_starting_one(no_ray):
    with pytest.raises(ray.exceptions.RaySystemError, match="not been started"):
        ray.put(1)
    assert not ray.is_initialized()
