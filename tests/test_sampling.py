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


def test_each_request_stops_at_its_own_token_limit(tiny_model_dir):
    from vialign.generation.base import ChatRequest, GenerationParams
    from vialign.generation.local import TransformersBackend

    backend = TransformersBackend.load(tiny_model_dir, dtype="float32")
    question = [{"role": "user", "content": "Describe the shapes you know."}]
    params = GenerationParams(max_new_tokens=12)
    free = backend.generate([ChatRequest("a", question)], params)[0].text
    capped = backend.generate(
        [ChatRequest("short", question, max_new_tokens=3), ChatRequest("long", question, max_new_tokens=50)],
        params,
    )
    tokens = [len(backend.tokenizer(r.text, add_special_tokens=False)["input_ids"]) for r in capped]
    assert tokens[0] <= 3 < len(backend.tokenizer(free, add_special_tokens=False)["input_ids"])
    assert capped[1].text == free, "a limit above the batch's leaves the batch's"
    assert free.startswith(capped[0].text), "greedy: the capped answer is the start of the free one"
