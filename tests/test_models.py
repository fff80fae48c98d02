"""Tokenizer, tiny LLaVA and the common loader: offline save/reload with identical logits."""

import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration

from vialign.models.families.llava import build_tiny_llava
from vialign.models.loading import load_llava, save_llava
from vialign.models.tiny import TinyModelSettings
from vialign.models.tokenizer import VICUNA_SYSTEM, texts_of, train_tokenizer
from vialign.records import read_samples


@pytest.fixture(scope="module")
def tokenizer(toyworld):
    return train_tokenizer(
        texts_of([toyworld / "corpus.jsonl", toyworld / "text" / "corpus.jsonl"]), vocab_size=400
    )


def pieces_of(sample):
    pieces = [VICUNA_SYSTEM]
    for turn in sample.conversations:
        pieces += ["USER:" if turn.role == "human" else "ASSISTANT:", turn.value]
        if turn.role == "gpt":
            pieces.append("</s>")
    return pieces


def test_piecewise_encoding_equals_whole_encoding(toyworld, tokenizer):
    samples = (
        list(read_samples(toyworld / "corpus.jsonl"))[:300]
        + list(read_samples(toyworld / "text" / "corpus.jsonl"))[:100]
    )
    for sample in samples:
        pieces = pieces_of(sample)
        whole = tokenizer(" ".join(pieces), add_special_tokens=False)["input_ids"]
        joined = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
        assert whole == joined, sample.id


def test_tokenizer_has_specials_and_no_unknowns(toyworld, tokenizer):
    for token in ("<image>", "<pad>", "<s>", "</s>", "<unk>"):
        assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id or token == "<unk>"
    text = "Odd chars: {x} ~ 42% #tag @user [0.1, 0.2]"
    assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tokenizer.tokenize("USER:")) == 1 and len(tokenizer.tokenize("ASSISTANT:")) == 1


def test_chat_template_renders_vicuna_layout(tokenizer):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
        {"role": "assistant", "content": "A circle."},
        {"role": "user", "content": "And?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"{VICUNA_SYSTEM} USER: <image>\nWhat? ASSISTANT: A circle.</s>USER: And? ASSISTANT:"
    system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *messages[:2]], tokenize=False
    )
    assert system.startswith("Be brief. USER:")


@pytest.mark.parametrize("vision", ["clip", "siglip"])
def test_save_reload_gives_identical_logits_offline(tmp_path, toyworld, tokenizer, vision, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = TinyModelSettings(vision=vision, seed=3)
    model, processor = build_tiny_llava(tokenizer, settings)
    save_llava(model, processor, tmp_path / "ckpt")
    files = {p.name for p in (tmp_path / "ckpt").iterdir()}
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    reloaded, reprocessor = load_llava(tmp_path / "ckpt")
    assert isinstance(reloaded, LlavaForConditionalGeneration)
    sample = next(read_samples(toyworld / "corpus.jsonl"))
    image = Image.open(toyworld / sample.image).convert("RGB")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is it?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert reprocessor.apply_chat_template(messages, add_generation_prompt=True) == prompt
    batch, rebatch = (
        processor(images=image, text=prompt, return_tensors="pt"),
        reprocessor(images=image, text=prompt, return_tensors="pt"),
    )
    assert torch.equal(batch["input_ids"], rebatch["input_ids"]) and torch.equal(
        batch["pixel_values"], rebatch["pixel_values"]
    )
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"] == image_id).sum()) == settings.image_tokens == 9
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**rebatch).logits)
        features = reloaded.get_image_features(pixel_values=rebatch["pixel_values"])
    features = features.pooler_output if hasattr(features, "pooler_output") else features
    features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
    assert features.reshape(-1, features.shape[-1]).shape[0] == settings.image_tokens


def test_loader_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_llava(tmp_path)


def test_tiny_settings_refuse_inconsistent_shapes():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        TinyModelSettings(image_size=50, patch_size=16)
    with pytest.raises(ValueError, match="divisible"):
        TinyModelSettings(text_hidden=130, text_heads=4)


def test_built_checkpoint_from_toyworld_generates(tiny_model_dir, toyworld):
    model, processor = load_llava(tiny_model_dir)
    image = Image.open(toyworld / "images" / "eval" / "000000.png").convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    batch = processor(
        images=image,
        text=processor.apply_chat_template(messages, add_generation_prompt=True),
        return_tensors="pt",
    )
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 4 or out[0, -1] == processor.tokenizer.eos_token_id


WORDS = [
    "USER:",
    "ASSISTANT:",
    "<image>",
    "</s>",
    "red",
    "circle",
    "What",
    "is",
    "x",
    "42",
    "[0.1,",
    "0.2]",
    "?",
    "A.",
    "Zebra!",
]


def test_piecewise_equals_whole_for_arbitrary_pieces(tokenizer):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    word = st.one_of(
        st.sampled_from(WORDS),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8),
    )
    piece = st.lists(word, min_size=1, max_size=5).map(" ".join)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(piece, min_size=1, max_size=6))
    def check(pieces):
        whole = tokenizer(" ".join(pieces), add_special_tokens=False)["input_ids"]
        joined = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
        assert whole == joined

    check()
