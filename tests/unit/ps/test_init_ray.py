"""`init_ray` joins the cluster a Ray job runs on, whatever the command line said."""

import pytest

from distinception.ps import session


@pytest.fixture
def calls(monkeypatch):
    seen: list[dict] = []
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", lambda **kw: seen.append(kw))
    return seen


def test_ray_address_in_the_environment_is_joined_without_local_resources(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert session.init_ray(None) is False  # joined, not started
    (kwargs,) = calls
    assert kwargs["address"] == "127.0.0.1:6379"
    assert "num_cpus" not in kwargs  # what made sweep and ensemble jobs fail on a cluster


def test_an_explicit_address_wins_over_the_environment(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    session.init_ray("auto")
    assert calls[0]["address"] == "auto"


def test_without_an_address_a_local_ray_is_started(calls, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert session.init_ray(None) is True
    assert "address" not in calls[0] and calls[0]["num_cpus"] >= 2


def _starts_after(failures: list[Exception], monkeypatch) -> list[str]:
    """`ray.init` raising each of `failures` in turn, then starting; returns the calls made."""
    seen: list[str] = []

    def init(**kw):
        seen.append("init")
        if failures:
            raise failures.pop(0)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(session.ray, "init", init)
    monkeypatch.setattr(session.ray, "shutdown", lambda: seen.append("shutdown"))
    return seen


def test_a_local_start_that_times_out_once_is_tried_again(monkeypatch):
    timeout = Exception("The current node timed out during startup. This could happen ...")
    seen = _starts_after([timeout], monkeypatch)
    assert session.init_ray(None) is True
    assert seen == ["init", "shutdown", "init"]


def test_a_local_start_is_tried_again_only_once_and_only_after_a_timeout(monkeypatch):
    timeout = Exception("The current node timed out during startup.")
    _starts_after([timeout, Exception(str(timeout))], monkeypatch)
    with pytest.raises(Exception, match="timed out during startup"):
        session.init_ray(None)
    seen = _starts_after([ValueError("num_cpus must be positive")], monkeypatch)
    with pytest.raises(ValueError, match="num_cpus"):
        session.init_ray(None)
    assert seen == ["init"]
