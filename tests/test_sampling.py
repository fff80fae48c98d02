"""Length-grouped sampling: a permutation, length-homogeneous batches in shuffled order, seeded."""

import random

from vialign.train.data import padding_share
from vialign.train.sampling import ShuffledLengthGroupedSampler

LENGTHS = [random.Random(i).randint(5, 300) for i in range(1000)]


def test_every_index_once_and_only_the_last_batch_short():
    sampler = ShuffledLengthGroupedSampler(LENGTHS, 32, seed=1, megabatch_batches=4)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert [len(b) for b in batches[:-1]] == [32] * (len(batches) - 1)
    assert list(sampler) == [i for b in batches for i in b]


def test_grouping_cuts_padding_and_more_grouping_cuts_more():
    def share(k):
        return padding_share(
            LENGTHS, ShuffledLengthGroupedSampler(LENGTHS, 32, seed=0, megabatch_batches=k).batches()
        )

    assert share(50) < share(8) < share(4) < share(1) * 0.5


def test_batch_order_is_not_sorted_by_length():
    batches = ShuffledLengthGroupedSampler(LENGTHS, 32, seed=0, megabatch_batches=31).batches()
    longest = [max(LENGTHS[i] for i in b) for b in batches[:31]]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)


def test_seeded_per_epoch():
    a, b = (
        ShuffledLengthGroupedSampler(LENGTHS, 16, seed=3),
        ShuffledLengthGroupedSampler(LENGTHS, 16, seed=3),
    )
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(ShuffledLengthGroupedSampler(LENGTHS, 16, seed=4)) != list(a)
