"""No test worker starts a Ray from a thread other than its main one.

Ray starts its GCS, raylet and dashboard with the kernel's parent-death signal set
(`PR_SET_PDEATHSIG`), and that signal follows the *thread* that started them, not the process.
A Ray started from a short-lived thread loses its GCS (SIGKILL) the moment that thread ends,
while the process stays connected to it as a driver; sixty seconds later Ray's GCS client ends
the whole process ("Failed to connect to GCS within 60 seconds ... The program will
terminate", exit status 1). In a test worker that is whichever test runs a minute later, which
then fails as a crashed worker with no trace of the cause. CI lost a worker that way twice: both
times a Ray with Ray's defaults (a dashboard, 30% of memory for objects; not one this project
starts) came up on a new thread and lost its GCS a second after its driver registered.

A thread that calls a Ray API after the test that owned it shut Ray down gets a Ray that way:
Ray's APIs start one on first use (`ray.get`, `ray.put`, the placement group calls, Tune's
`ray.init()`). So in each worker:

- Ray's own start-on-first-use is off: such a call raises where it is made;
- `ray.init` from a thread other than the main one raises instead of starting anything, and the
  attempt (its thread, the test running, its stack) is reported as a warning of that test, so
  the code that made it can be found.

Subprocesses (the commands as a user types them) are left as a user has them.
"""

from __future__ import annotations

import os
import threading
import traceback
import warnings
from typing import Any

import pytest


class StrayRayWarning(UserWarning):
    """Ray was asked to start from a thread other than the main one."""


def _guarded(init: Any) -> Any:
    def init_on_the_main_thread(*args: Any, **kwargs: Any) -> Any:
        thread = threading.current_thread()
        if thread is threading.main_thread():
            return init(*args, **kwargs)
        message = (
            f"ray.init() called from thread {thread.name!r} during "
            f"{os.environ.get('PYTEST_CURRENT_TEST', 'no test')}: refused, since its GCS would "
            "die with that thread and take this process with it a minute later. Called from:\n"
            + "".join(traceback.format_stack(limit=25)[:-1])
        )
        warnings.warn(message, StrayRayWarning, stacklevel=2)
        raise RuntimeError(message.split("\n", 1)[0])

    init_on_the_main_thread.guarded = True  # type: ignore[attr-defined]
    return init_on_the_main_thread


def pytest_configure(config: pytest.Config) -> None:
    import ray
    import ray._private.auto_init_hook as auto_init

    auto_init.enable_auto_connect = False
    if not getattr(ray.init, "guarded", False):
        ray.init = _guarded(ray.init)
