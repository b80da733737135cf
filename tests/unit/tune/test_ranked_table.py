"""The table a sweep prints: its trials in rank order, and why any of them failed."""

from __future__ import annotations

from distinception.tune.sweep import format_ranked

ROWS = [
    {"rank": 1, "trial": "a1", "status": "finished", "m": 0.25, "examples": 1200, "lr": 0.02},
    {"rank": 2, "trial": "b2", "status": "stopped", "m": 0.5, "examples": 600, "lr": 0.01},
    {
        "rank": 3,
        "trial": "c3",
        "status": "failed",
        "m": float("nan"),
        "examples": 0,
        "lr": 0.05,
        "error": "RayActorError: the actor died unexpectedly",
    },
]


def test_the_table_names_each_failed_trial_and_its_error():
    lines = format_ranked(ROWS, "m", ["lr"]).splitlines()
    assert lines[0].split() == ["rank", "trial", "status", "m", "examples", "lr"]
    assert [line.split()[1] for line in lines[1:4]] == ["a1", "b2", "c3"]
    assert lines[4:] == ["trial c3 failed: RayActorError: the actor died unexpectedly"]


def test_no_failure_lines_when_every_trial_ran():
    assert len(format_ranked(ROWS[:2], "m", ["lr"]).splitlines()) == 3
