"""The callback list: the run id's owner, and every callback hearing of the end."""

from __future__ import annotations

import pytest

from distinception.ps.callbacks import Callback, CallbackList, TrainResult


class Recorder(Callback):
    def __init__(self, name: str, log: list[str], run_id: str | None = None, fail: bool = False):
        self.name, self.log, self.run_id, self.fail = name, log, run_id, fail

    def on_start(self, cfg, info):
        self.log.append(f"{self.name}.start")
        return self.run_id

    def on_end(self, result, model):
        self.log.append(f"{self.name}.end")
        if self.fail:
            raise RuntimeError(f"{self.name} could not upload the model")

    def on_failure(self, error):
        self.log.append(f"{self.name}.failure")
        if self.fail:
            raise RuntimeError(f"{self.name} could not mark the run failed")


RESULT = TrainResult(run_id=None, examples=1, epochs=0.0, seconds=1.0, updates=1, final={})


def test_the_run_id_is_the_first_one_returned():
    log: list[str] = []
    callbacks = CallbackList(
        [Recorder("a", log), Recorder("b", log, "r1"), Recorder("c", log, "r2")]
    )
    assert callbacks.on_start(None, {}) == "r1"
    assert log == ["a.start", "b.start", "c.start"]


def test_every_callback_hears_of_the_end_and_the_first_error_is_raised_after():
    log: list[str] = []
    callbacks = CallbackList(
        [Recorder("a", log, fail=True), Recorder("b", log, fail=True), Recorder("c", log)]
    )
    with pytest.raises(RuntimeError, match="a could not upload"):
        callbacks.on_end(RESULT, None)
    assert log == ["a.end", "b.end", "c.end"]


def test_a_failing_on_failure_neither_hides_the_jobs_error_nor_skips_the_others(caplog):
    log: list[str] = []
    callbacks = CallbackList([Recorder("a", log, fail=True), Recorder("b", log)])
    callbacks.on_failure(ValueError("the job's own error"))  # does not raise
    assert log == ["a.failure", "b.failure"]
    assert "Recorder.on_failure raised" in caplog.text
