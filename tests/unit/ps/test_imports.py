"""What an actor's process imports: every actor imports `ps.actors`, and a shard never reads an
image, so the data path (torchvision, about a second of CPU a process) comes in only when a
replica or the averager is built, not at the first evaluation inside the run's clock."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import distinception.ps.actors
from distinception.config import from_dict
from distinception.ps.averager import AveragerLoop
from distinception.ps.replica_loop import train_stream
from distinception.recipes import get_recipe

print("module", "torchvision" in sys.modules, "distinception.data.loader" in sys.modules)
cfg = from_dict({}, get_recipe("tiny"))
train_stream(cfg, "", 0, 1)
print("replica", "distinception.data.loader" in sys.modules)
del sys.modules["distinception.data.loader"]


class Shards:
    errors = ()
    versions = [0]

    def issue(self, after=None):
        return None


AveragerLoop(cfg, "", 4, lambda count: Shards(), "", resume=False)
print("averager", "distinception.data.loader" in sys.modules)
"""


def test_the_data_path_is_imported_when_a_replica_or_the_averager_is_built():
    proc = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:3] == [
        "module False False",  # what a shard's process imports
        "replica True",
        "averager True",
    ], proc.stdout
