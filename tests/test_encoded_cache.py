"""The batched encoder gives exactly what `encode` gives per sample (toy, Llama-2 and SmolLM2
tokenizers; truncated and quarantined samples included), and the encoded-data cache returns what
`encode_all` returns, reuses a finished build, misses on any changed input and never serves a
half-built one."""

import copy

import numpy as np
import pytest

import vialign.models.encoded_cache as cache
from tests.test_families import RECORDS, TEMPLATES
from vialign.models.encoding import ChatEncoder, EncoderSettings, EncodingError, encode_all
from vialign.models.families.tokenizers import llava15_tokenizer, smollm2_tokenizer
from vialign.models.tokenizer import texts_of, train_tokenizer
from vialign.records import IMAGE_TAG, Sample, read_samples, write_jsonl

LONG = " ".join(f"word{k} and more text." for k in range(60))
EXTRA = [
    {
        "id": "long-tail",
        "image": "a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"},
            {"from": "gpt", "value": "A bus."},
            {"from": "human", "value": "Tell me everything."},
            {"from": "gpt", "value": LONG},
        ],
    },
    {"id": "too-long", "conversations": [{"from": "human", "value": LONG}, {"from": "gpt", "value": "ok"}]},
    {
        "id": "tag-mismatch",
        "image": "a.jpg",
        "conversations": [{"from": "human", "value": "no tag here"}, {"from": "gpt", "value": "fine"}],
    },
    {
        "id": "spaces",
        "conversations": [
            {"from": "human", "value": "  leading   spaces\n\n\tand tabs \u3000 wide  "},
            {"from": "gpt", "value": " x  y "},
        ],
    },
    {
        "id": "unicode",
        "image": "b.jpg",
        "conversations": [
            {"from": "human", "value": f"Größe? 東京 🚌\n{IMAGE_TAG}"},
            {"from": "gpt", "value": "Très grand — 大きい 🚌."},
        ],
    },
]
SAMPLES = [Sample.model_validate(r) for r in [*RECORDS, *EXTRA] * 3]


def assert_same(per_sample, batched):
    assert len(per_sample) == len(batched)
    for a, b in zip(per_sample, batched, strict=True):
        if isinstance(a, EncodingError):
            assert isinstance(b, EncodingError) and (a.sample_id, a.reason) == (b.sample_id, b.reason)
        else:
            assert a == b


def per_sample(encoder, samples):
    out = []
    for sample in samples:
        try:
            out.append(encoder.encode(sample))
        except EncodingError as exc:
            out.append(exc)
    return out


def check_batched_equals_per_sample(tokenizer, **settings):
    encoder = ChatEncoder(tokenizer, EncoderSettings(image_tokens=7, templates=TEMPLATES, **settings))
    expected = per_sample(encoder, SAMPLES)
    straddling, encoder.straddling = encoder.straddling, 0
    assert_same(expected, encoder.encode_many(SAMPLES))
    assert encoder.straddling == straddling
    seen = {type(r).__name__ for r in expected} | {
        r.dropped_turns > 0 for r in expected if hasattr(r, "dropped_turns")
    }
    assert {"EncodingError", "Encoded", True, False} <= seen, "the samples must cover errors and truncation"


@pytest.fixture(scope="module")
def toy_tokenizer(toyworld):
    return train_tokenizer(
        texts_of([toyworld / "corpus.jsonl", toyworld / "text" / "corpus.jsonl"]), vocab_size=400
    )


@pytest.mark.parametrize("mode", ["lit", "response", "all"])
def test_batched_equals_per_sample_on_the_toy_tokenizer(toy_tokenizer, mode):
    check_batched_equals_per_sample(toy_tokenizer, mode=mode, max_length=120)


@pytest.mark.parametrize("chat_format", ["vicuna_v1", "tokenizer"])
@pytest.mark.parametrize("mode", ["lit", "response"])
def test_batched_equals_per_sample_on_llama2(chat_format, mode):
    check_batched_equals_per_sample(llava15_tokenizer(), chat_format=chat_format, mode=mode, max_length=160)


@pytest.mark.parametrize("chat_format", ["vicuna_v1", "tokenizer"])
def test_batched_equals_per_sample_on_smollm2(chat_format):
    check_batched_equals_per_sample(smollm2_tokenizer(), chat_format=chat_format, mode="lit", max_length=160)


def test_a_slow_tokenizer_takes_the_per_sample_path(monkeypatch):
    encoder = ChatEncoder(llava15_tokenizer(), EncoderSettings(image_tokens=7, max_length=160))
    monkeypatch.setattr(type(encoder.tokenizer), "is_fast", property(lambda self: False))
    assert_same(per_sample(encoder, SAMPLES), encoder.encode_many(SAMPLES))


# ---------------------------------------------------------------- the cache


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl([s.to_json() for s in SAMPLES], path)
    return path


def llama_encoder(**settings):
    return ChatEncoder(llava15_tokenizer(), EncoderSettings(image_tokens=7, max_length=160, **settings))


def assert_items_equal(items, expected):
    assert [s.id for s, _ in items] == [s.id for s, _ in expected]
    for (_, got), (_, want) in zip(items, expected, strict=True):
        assert got.input_ids.tolist() == want.input_ids and got.labels.tolist() == want.labels
        assert got.kinds.tolist() == want.kinds and len(got) == len(want)
        assert (got.n_images, got.dropped_turns) == (want.n_images, want.dropped_turns)


def counting(monkeypatch):
    calls = []
    real = ChatEncoder.encode_arrays
    monkeypatch.setattr(
        ChatEncoder, "encode_arrays", lambda self, chunk: calls.append(len(chunk)) or real(self, chunk)
    )
    return calls


def test_cache_returns_what_encode_all_returns_and_is_reused(tmp_path, data, monkeypatch):
    encoder = llama_encoder()
    expected, expected_report = encode_all(encoder, read_samples(data))
    items, report = cache.encode_dataset(encoder, data, tmp_path / "cache", workers=1)
    assert_items_equal(items, expected)
    assert report == expected_report and report.quarantined and report.truncated
    monkeypatch.setattr(ChatEncoder, "encode_arrays", lambda *a: pytest.fail("a cache hit must not encode"))
    again, report_again = cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    assert_items_equal(again, expected)
    assert report_again == expected_report
    assert isinstance(again[0][1].input_ids, np.memmap)


def test_changed_settings_tokenizer_or_data_miss(tmp_path, data, monkeypatch):
    cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    calls = counting(monkeypatch)
    cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    assert calls == []
    cache.encode_dataset(llama_encoder(mode="response"), data, tmp_path / "cache", workers=1)
    assert len(calls) == 1
    tokenizer = copy.deepcopy(llava15_tokenizer())
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    cache.encode_dataset(
        ChatEncoder(tokenizer, EncoderSettings(image_tokens=7, max_length=160)),
        data,
        tmp_path / "cache",
        workers=1,
    )
    assert len(calls) == 2
    data.write_text(data.read_text().replace("Kite", "Kites"))
    items, _ = cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    assert len(calls) == 3 and [s.conversations[3].value for s, _ in items[1:2]] == ["2"]
    assert len(list((tmp_path / "cache").iterdir())) == 4


def test_worker_processes_build_the_same_cache(tmp_path, data, monkeypatch):
    monkeypatch.setattr(cache, "PART_SIZE", 3)
    expected, expected_report = encode_all(llama_encoder(), read_samples(data))
    items, report = cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=2)
    assert -(-len(SAMPLES) // 3) > 2, "several parts, so the workers have parts to encode"
    assert_items_equal(items, expected)
    assert report == expected_report


def test_an_interrupted_build_is_never_read_and_resumes_at_its_missing_parts(tmp_path, data, monkeypatch):
    monkeypatch.setattr(cache, "PART_SIZE", 8)
    real = ChatEncoder.encode_arrays
    calls = []

    def failing_third(self, chunk):
        calls.append(len(chunk))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, chunk)

    monkeypatch.setattr(ChatEncoder, "encode_arrays", failing_third)
    with pytest.raises(KeyboardInterrupt):
        cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.endswith(".partial") and not (folder / "report.json").exists()
    items, report = cache.encode_dataset(llama_encoder(), data, tmp_path / "cache", workers=1)
    n_parts = -(-len(SAMPLES) // 8)
    assert len(calls) == 2 + 1 + (n_parts - 2), "the two finished parts are not encoded again"
    expected, expected_report = encode_all(llama_encoder(), read_samples(data))
    assert_items_equal(items, expected)
    assert report == expected_report
    assert [p.name.endswith(".partial") for p in (tmp_path / "cache").iterdir()] == [False]
