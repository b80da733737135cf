"""The local trainer the benchmarks compare against: its schedule counts examples as a shard's."""

import torch

from distinception.bench.common import LocalTrainer
from distinception.config import from_dict
from distinception.recipes import get_recipe


def _trainer(workers: int) -> LocalTrainer:
    cfg = from_dict({"optim": {"lr_decay": 0.5, "lr_decay_epochs": 1.0}}, get_recipe("tiny"))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 4, (16,))
    return LocalTrainer(cfg, 4, iter([(x, y)] * 4), examples_per_epoch=32, workers=workers)


def test_a_synchronous_worker_counts_every_workers_examples_in_its_schedule():
    alone, pair = _trainer(1), _trainer(2)
    for trainer in (alone, pair):
        trainer.step()
        trainer.step()
    assert alone.seen == 32 and pair.seen == 64
    # One epoch (32 examples) halves the rate: the pair's schedule is an epoch ahead.
    lr_alone = alone.optimizer.param_groups[0]["lr"]
    lr_pair = pair.optimizer.param_groups[0]["lr"]
    assert abs(lr_pair - lr_alone / 2) < 1e-12, (lr_alone, lr_pair)


def test_scoring_between_steps_leaves_the_training_unchanged(easy_data):
    """The local loop and DDP's rank 0 score their weights in the training process: a score
    must not draw from the generator dropout uses, or the curve depends on where it is scored."""
    from quadrants import quadrant_job

    from distinception.bench.common import open_stream, top1_error
    from distinception.data.generated import resolve_data

    cfg = quadrant_job(easy_data, "", run={"seed": 0})
    path, num_classes, examples = resolve_data(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flats = []
        for score_every in (0, 1):
            trainer = LocalTrainer(cfg, num_classes, open_stream(cfg, path), examples)
            for _ in range(3):
                trainer.step()
                if score_every:
                    top1_error(cfg, path, num_classes, trainer.core.flat)
            flats.append(trainer.core.flat.detach().clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(flats[0], flats[1]), (flats[0] - flats[1]).abs().max()
