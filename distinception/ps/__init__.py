"""The asynchronous parameter server, in three layers:

- `transport/`: how a process reaches the shards (`ShardChannel`), over shared memory on one
  node (`transport.shm`) or the object store (`transport.objstore`), and the wire format.
- plain cores, unit-tested without Ray: the update rule (`shard`) and the shard as its peers see
  it (`shard_server`), a replica's compute (`replica`) and its loop (`replica_loop`), the
  averager (`averager`), the flat layout and the staleness policies.
- the Ray shell (`actors`), and the control plane that starts and watches it: the
  `coordinator`, whose loop runs the parts in `control/` (replicas, stats, evaluation,
  checkpoints).

Code outside `ps/` uses what this module exports and the `transport` package, nothing deeper:
the benchmarks rebuild a replica's step, a shard's optimizer and the transport from these
parts to compare them with other systems on equal terms.
"""

from distinception.ps.averager import AveragerCore
from distinception.ps.replica import ReplicaCore, build_flat_model, straggle
from distinception.ps.shard import (
    build_optimizer,
    histogram_mean,
    histogram_quantile,
    lr_factor,
)
from distinception.ps.transport import RPC_TIMEOUT_S, ShardChannel, shm

__all__ = [
    "RPC_TIMEOUT_S",
    "AveragerCore",
    "ReplicaCore",
    "ShardChannel",
    "build_flat_model",
    "build_optimizer",
    "histogram_mean",
    "histogram_quantile",
    "lr_factor",
    "shm",
    "straggle",
]
