"""The `distinception` command as a user types it: the installed entry point, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

EXE = str(Path(sys.executable).with_name("distinception"))


def distinception(
    *args: str, code: int | None = 0, timeout: float = 600, **run: Any
) -> subprocess.CompletedProcess:
    """Run `distinception ARGS` (`run` goes to `subprocess.run`: env, cwd); unless `code` is
    None, assert it exits with `code`, showing the tail of its stderr when it does not."""
    proc = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, **run)
    if code is not None:
        assert proc.returncode == code, proc.stderr[-3000:]
    return proc
