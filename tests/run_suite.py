"""`make test`'s runner: pytest, then exit with pytest's status and skip the interpreter's own
shutdown.

When `pytest.main` returns, everything a session does at its end has happened: fixtures torn
down (Ray shut down, servers stopped), the summary printed, the cache written. What is left is
the interpreter finalising modules while native threads that Ray's core worker, gRPC and torch
started in this process are still parked; on CI that crashed once with SIGSEGV after the summary
of a finished run, and the crash, not the tests, set the exit status. Leaving with `os._exit`
keeps the status pytest decided. Arguments are passed on to pytest.
"""

from __future__ import annotations

import os
import sys

import pytest

if __name__ == "__main__":
    status = int(pytest.main(sys.argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
