"""What the benchmark tests read back from a command's output: its tables and its plots."""

from __future__ import annotations

import os


def png(path: str) -> None:
    """`path` is a PNG of a plot's size (not an empty or runaway file)."""
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) < 300_000


def table_rows(table: str, first: str) -> list[list[str]]:
    """The cells of a markdown table's rows whose first cell starts with `first`."""
    return [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in table.splitlines()
        if line.startswith(f"| {first}")
    ]
