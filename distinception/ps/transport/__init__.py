"""How a replica or the averager reaches the shards: the bottom layer of `ps/`.

`ShardChannel` is all the replica loop and the averager know of the shards: pull every shard's
weights into a buffer, push every shard its slice of a gradient and get each shard's result.
Two implementations sit under it, chosen per shard when the channel attaches:

- `shm`: same node. The shard's weights live in a mapped file updated in place; a push names a
  gradient slot in shared memory and rings the shard's doorbell (a Unix socket).
- `objstore`: any node. The shard `ray.put`s each version at most once and pushes travel as Ray
  calls. `objstore.ShardLinks` is the channel a Ray process uses: it routes each shard through
  `shm` when it can and through the object store otherwise.

`wire` is what both encode the same way. Only `objstore` imports Ray, so the layers above are
driven in tests by an in-memory channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

#: A pull or push that takes longer than this is treated as a failure of that shard.
RPC_TIMEOUT_S = 120.0

#: Loads pulled values: (start, stop, values) for one shard's range of the flat vector.
Load = Callable[[int, int, torch.Tensor], None]


class GradientSlot(Protocol):
    """A buffer a gradient can be pushed from without a copy (a shared-memory slot)."""

    path: str
    values: torch.Tensor


class ShardChannel(Protocol):
    """Every shard, as one process reaches them.

    Pushes answer in two ways: some at once (`push`'s answers, already results), others later
    (`push`'s pending handles, resolved with `wait` and `answer`). A result is a shard's
    `PushResult` as a dict, or None for a push that was lost. Pulls are issued, optionally
    behind pushes so that they return the weights those pushes produced, and finished later.
    """

    #: Per shard: the version and incarnation of the weights last pulled.
    versions: list[int]
    incarnations: list[str]
    #: Set when a shard may have been restarted: the channel re-attaches before its next pull.
    stale: bool
    #: The exceptions that mean a shard could not be reached (counted, never fatal).
    errors: tuple[type[BaseException], ...]

    def issue(self, after: Sequence[Any] | None = None) -> Any:
        """Start a pull of every shard, behind the pending pushes `after`; returns a ticket."""
        ...

    def arrived(self, ticket: Any) -> bool:
        """Whether `finish(ticket)` would return without waiting."""
        ...

    def finish(self, ticket: Any, load: Load, attempts: int = 60) -> None:
        """Complete a pull: `load` every shard's values, retrying while a shard restarts."""
        ...

    def push(
        self,
        grad: torch.Tensor,
        slot: str,
        versions: list[int],
        incarnations: list[str],
        examples: int,
        fingerprint: str,
        transfer_dtype: str,
    ) -> tuple[list[Any], list[dict[str, Any] | None]]:
        """Send every shard its slice of `grad` (lying in the slot named `slot`, if any);
        returns (pending handles, results already in)."""
        ...

    def wait(
        self, pending: list[Any], num_returns: int, timeout: float
    ) -> tuple[list[Any], list[Any]]:
        """(answered, still pending): up to `num_returns` answered, waiting at most `timeout`."""
        ...

    def answer(self, handle: Any) -> dict[str, Any] | None:
        """The result of an answered push (None: lost)."""
        ...

    def gradient_slots(self, owner: str, numel: int, count: int) -> Sequence[GradientSlot]:
        """Buffers to push from without a copy; empty while no shard can read them."""
        ...
