"""Length-grouped sampling that keeps batches i.i.d. in order.

transformers' `LengthGroupedSampler` sorts each megabatch of 50 batches by length and yields those
batches longest first, so training sees runs of batches of nearly equal length. When length carries
content (a caption's length grows with the number of objects it lists), the model can follow that
drift instead of reading the image: measured on the toy world, caption loss with true vs shuffled
images was 0.74 vs 0.74 (images ignored) with it, 0.61 vs 1.03 without grouping. Here batches are
still length-homogeneous, but their order is shuffled, seeded by seed and epoch (so a resumed run
replays the same order).

Grouping itself still costs learning in that regime: with 4 or 8 batches per sorted group (padding 8%
and 5% on captions, against 28% for random batches) the tiny model did not learn to read images within
300 steps, while random batches did (0.615 vs 0.978). So `group_by_length` is off by default; turn it on
where lengths carry no content signal, e.g. large real models whose throughput is padding-bound.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ShuffledLengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, megabatch_batches: int = 50):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.megabatch = batch_size * megabatch_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        full: list[list[int]] = []
        partial: list[list[int]] = []
        for start in range(0, len(order), self.megabatch):
            chunk = sorted(order[start : start + self.megabatch], key=lambda i: -self.lengths[i])
            for b in range(0, len(chunk), self.batch_size):
                batch = chunk[b : b + self.batch_size]
                (full if len(batch) == self.batch_size else partial).append(batch)
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        # A short batch goes last: anywhere else it would shift every later batch's boundaries.
        return shuffled + partial

    def __iter__(self) -> Iterator[int]:
        return iter([i for batch in self.batches() for i in batch])
