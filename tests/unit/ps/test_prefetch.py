"""The replica's data thread hands out exactly the batches the plain stream yields, reports the
position after the last batch handed out, and fails loudly (never hangs) when the stream fails."""

from __future__ import annotations

import pytest
import torch

from distinception.config import AUGMENT_PRESETS
from distinception.data.loader import TrainStream
from distinception.ps.replica import BatchPrefetcher


def _stream(path: str) -> TrainStream:
    return TrainStream(
        path,
        consumer=0,
        num_consumers=1,
        batch_size=8,
        augment=AUGMENT_PRESETS["paper"],
        input_size=32,
        seed=3,
    )


def test_prefetched_batches_and_positions_match_the_plain_stream(tiny_data):
    plain = _stream(tiny_data)
    it = iter(plain)
    expected = []
    for _ in range(3):
        x, y = next(it)
        expected.append((x, y, plain.position()))
    data = BatchPrefetcher(_stream(tiny_data))
    try:
        for x_ref, y_ref, pos in expected:
            with data.rng:  # a forward pass drawing random numbers meanwhile changes nothing
                torch.rand(100)
            x, y = next(data)
            data.request()  # the next batch is prepared ahead ...
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
            assert data.position == pos  # ... but the position is that of the batch handed out
    finally:
        data.close()


def test_a_failing_stream_raises_on_every_call():
    class Broken:
        skipped = 0

        def position(self) -> dict:
            return {"epoch": 0, "offset": 0}

        def __iter__(self):
            raise OSError("shard unreadable")
            yield

    data = BatchPrefetcher(Broken())
    for _ in range(2):
        with pytest.raises(OSError, match="shard unreadable"):
            next(data)
    data.close()
