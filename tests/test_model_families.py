"""Model families through one interface: LLaVA-1.5's encodings unchanged by it, and LLaVA-NeXT (AnyRes:
an image's token count depends on its size) through encoding, packing, SFT, DPO and generation on
Llama-2's real tokenizer, checked against its own processor."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_families import RECORDS, SAMPLES, TEMPLATES, write_preference_pairs
from tests.test_train import loss_and_grads
from vialign.models.encoding import IGNORE_INDEX, TRAINED, ChatEncoder, EncoderSettings, Kind, encode_all
from vialign.models.families import FAMILIES, family_named, family_of
from vialign.models.families.tokenizers import family_tokenizer
from vialign.models.loading import build_tiny_model, load_llava, load_processor
from vialign.models.tiny import TinyModelSettings
from vialign.records import IMAGE_TAG, Sample, read_samples, write_jsonl
from vialign.train.core import training_encoder
from vialign.train.settings import SFTSettings

# sha256 prefixes of the ids, labels and roles of the session toy world's first 300 samples, as the
# encoder made them before the family interface (commit 1b0fd28), per tokenizer, format and mode
BEFORE_FAMILIES = {
    ("toy", "vicuna_v1", "lit"): "91d9f9a644982b34",
    ("toy", "tokenizer", "response"): "99777dbe77ae4395",
    ("llava-1.5", "vicuna_v1", "lit"): "33633b9653fe0bf0",
    ("llava-1.5", "vicuna_v1", "response"): "fde66cb66d1d1c8c",
    ("smollm2", "tokenizer", "lit"): "46d62d2215362ea8",
    ("smollm2", "vicuna_v1", "response"): "0049ca7597f99a92",
}


def encodings_digest(tokenizer, samples, **settings) -> str:
    digest = hashlib.sha256()
    for encoded in ChatEncoder(tokenizer, EncoderSettings(**settings)).encode_arrays(samples):
        if isinstance(encoded, Exception):
            digest.update(encoded.reason.encode())
            continue
        for array in (encoded.input_ids, encoded.labels, encoded.kinds):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def test_llava_encodings_are_byte_identical_to_before_the_family_interface(toyworld, tiny_model_dir):
    from transformers import AutoTokenizer

    samples = list(read_samples(toyworld / "corpus.jsonl"))[:300]
    tokenizers = {"toy": AutoTokenizer.from_pretrained(tiny_model_dir)}
    for (name, chat_format, mode), expected in BEFORE_FAMILIES.items():
        tokenizer = tokenizers.get(name) or tokenizers.setdefault(name, family_tokenizer(name))
        got = encodings_digest(
            tokenizer, samples, chat_format=chat_format, mode=mode, image_tokens=9, max_length=512
        )
        assert got == expected, (name, chat_format, mode)


# ---------------------------------------------------------------- families whose image tokens vary

# (width, height) of each record's image: square, wide, tall, each tiled or resized differently
SIZES = [(64, 48), (120, 40), (36, 100), (48, 48)]


@pytest.fixture(scope="module", params=["llava-next", "qwen2-vl", "smolvlm"])
def world(request, tmp_path_factory):
    """The real-format records with images of different sizes, one sample with two images, and a tiny
    model of the family (LLaVA-NeXT around Llama-2's tokenizer, Qwen2-VL around SmolLM2's)."""
    root = tmp_path_factory.mktemp(request.param)
    images = [r["image"] for r in RECORDS if "image" in r]
    for k, (path, size) in enumerate(zip(images, SIZES, strict=True)):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (50 * k, 90, 200 - 40 * k)).save(root / path)
    write_jsonl([*SAMPLES, two_images(images)], root / "train.jsonl")
    build_tiny_model(None, root / "model", TinyModelSettings(family=request.param, seed=1))
    return root


def two_images(images: list[str]) -> Sample:
    return Sample.model_validate(
        {
            "id": "two-images",
            "image": images[:2],
            "conversations": [
                {"from": "human", "value": "<image>\n<image>\nWhich picture is wider?"},
                {"from": "gpt", "value": "The second one."},
            ],
        }
    )


def processor_ids(processor, root, sample: Sample) -> list[int]:
    """The ids plain transformers makes of a conversation: the chat template over typed content (a
    turn's images first, as LLaVA places them), then the processor."""
    messages = []
    for turn in sample.conversations:
        text = turn.value.replace(IMAGE_TAG, "").strip()
        images = [{"type": "image"}] * turn.value.count(IMAGE_TAG)
        role = "user" if turn.role == "human" else "assistant"
        messages.append({"role": role, "content": [*images, {"type": "text", "text": text}]})
    text = processor.apply_chat_template(messages)
    pictures = [Image.open(root / path).convert("RGB") for path in sample.images] or None
    return processor(text=text, images=pictures)["input_ids"][0]


def encoder_of(world, mode="lit", templates=None):
    """The processor and training's encoder (no weights loaded)."""
    processor = load_processor(world / "model")
    return processor, training_encoder(processor, SFTSettings(mode=mode), mode, templates, image_root=world)


def test_registry_names_each_family_and_finds_it_from_model_and_processor(world):
    model, processor = load_llava(world / "model")
    family = family_of(model)
    assert family is family_of(processor) is family_named(family.name) is FAMILIES[family.name]
    with pytest.raises(ValueError, match="unknown model family 'llava_next'"):
        family_named("llava_next")
    assert {family.part_of(name) for name, _ in model.named_parameters()} == {"vision", "projector", "llm"}


@pytest.mark.parametrize("mode", ["lit", "response"])
def test_ids_are_the_processors_and_labels_are_exact(world, mode):
    """Every record kind (image last, templates, multi-turn, text only) and a two-image sample: the ids
    are those the family's own processor makes; what is trained, decoded, is exactly every answer and its
    end of turn (and in LIT the user's own text, without image tags or templates): no image, template,
    role or system token."""
    processor, encoder = encoder_of(world, mode, {"sentences": sorted(TEMPLATES)})
    samples = list(read_samples(world / "train.jsonl"))
    image_id, eos = processor.image_token_id, processor.tokenizer.eos_token
    counts = set()
    for sample, encoded in zip(samples, encoder.encode_many(samples), strict=True):
        assert encoded.input_ids == processor_ids(processor, world, sample), sample.id
        trained = [label != IGNORE_INDEX for label in encoded.labels]
        assert trained == [Kind(k) in TRAINED[mode] for k in encoded.kinds], sample.id
        kept = [i for i, t in zip(encoded.input_ids, trained, strict=True) if t]
        assert "".join(processor.tokenizer.decode(kept).split()) == trained_text(sample, mode, eos), sample.id
        counts.add(encoded.input_ids.count(image_id))
    assert len(counts - {0}) >= 2, "image sizes give different token counts"


def trained_text(sample: Sample, mode: str, eos: str) -> str:
    """What a sample trains, whitespace removed: its answers each with the end of turn, and in LIT the
    user's turns first, without image tags and template sentences."""
    text = ""
    for turn in sample.conversations:
        if turn.role == "gpt":
            text += turn.value + eos
        elif mode == "lit":
            text += strip_templates(turn.value.replace(IMAGE_TAG, ""))
    return "".join(text.split())


def strip_templates(text: str) -> str:
    for template in TEMPLATES:
        text = text.replace(template, "")
    return text


def test_batched_and_one_by_one_encodings_agree(world):
    _, encoder = encoder_of(world)
    samples = list(read_samples(world / "train.jsonl"))
    for sample, batched in zip(samples, encoder.encode_many(samples), strict=True):
        single = encoder.encode(sample)
        assert (batched.input_ids, batched.labels, batched.kinds) == (
            single.input_ids,
            single.labels,
            single.kinds,
        )


def test_a_sample_whose_images_do_not_match_its_tags_is_refused_with_its_id(world):
    _, encoder = encoder_of(world)
    wrong = SAMPLES[1].model_copy(update={"id": "tags-vs-images", "image": [RECORDS[0]["image"]] * 2})
    missing = SAMPLES[2].model_copy(update={"id": "no-such-image", "image": "missing/1.jpg"})
    items, report = encode_all(encoder, [SAMPLES[2], wrong, missing])
    assert [s.id for s, _ in items] == ["mc-1"]
    assert report.quarantined["tags-vs-images"] == "1 <image> tags for 2 image(s)"
    assert report.quarantined["no-such-image"].startswith("cannot size its image tokens")


def test_packed_batch_has_the_loss_and_gradients_of_the_padded_batch(world):
    """Qwen2-VL's packed rows carry each sample's text and M-RoPE positions restarted; LLaVA-NeXT's
    images (tiles and sizes) follow the packed order."""
    from vialign.train.data import PackedSFTCollator, SFTCollator, SFTDataset

    model = load_llava(world / "model")[0]
    processor, encoder = encoder_of(world)
    items, _ = encode_all(encoder, list(read_samples(world / "train.jsonl")))
    rows = [SFTDataset(items, world)[i] for i in range(len(items))]
    family = family_of(processor)
    padded = SFTCollator.of(processor)(rows)
    width = sum(len(r["input_ids"]) for r in rows) // 2
    packed = PackedSFTCollator.of(processor, row_tokens=width)(rows)
    positions = packed["position_ids"]
    text = positions[0] if positions.dim() == 3 else positions  # Qwen2-VL's first row: text positions
    # fewer rows than samples, and every sample (and pad tail) restarts at position 0
    assert packed["input_ids"].shape[0] < len(rows) <= int((text == 0).sum())
    if family.name == "qwen2-vl":
        assert packed["position_ids"].shape == (4, *packed["input_ids"].shape)
    loss_a, labels_a, grads_a = loss_and_grads(model, padded)
    loss_b, labels_b, grads_b = loss_and_grads(model, packed)
    assert labels_a == labels_b and loss_b == pytest.approx(loss_a, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert {family.part_of(name) for name in grads_a} == {"vision", "projector", "llm"}
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


def test_lora_sft_then_dpo_then_eval(world, toyworld, tmp_path):
    """LoRA SFT with packing (vision frozen, projector trained), DPO from it, greedy answers whose prompts
    are the processor's, the yes/no judge's reading, and `eval run` on the toy world's benchmarks."""
    from transformers import AutoModelForImageTextToText

    from vialign.generation.base import ChatRequest, GenerationParams
    from vialign.generation.local import TransformersBackend
    from vialign.train.dpo import DPOSettings, train_dpo
    from vialign.train.settings import LoraSettings
    from vialign.train.sft import train_sft

    settings = SFTSettings(
        stage="finetune",
        use_cpu=True,
        lr=1e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        batch_size=3,
        max_steps=2,
        packing=True,
        lora=LoraSettings(enabled=True, r=4),
    )
    manifest = train_sft(world / "model", world / "train.jsonl", tmp_path / "sft", settings, image_root=world)
    assert manifest.counts["quarantined"] == 0 and manifest.counts["encoded"] == len(SAMPLES) + 1
    assert manifest.counts["trainable_parameters"]["vision"] == 0
    before = AutoModelForImageTextToText.from_pretrained(world / "model").state_dict()
    after = AutoModelForImageTextToText.from_pretrained(tmp_path / "sft").state_dict()
    family = family_of(load_llava(tmp_path / "sft")[1])
    changed = {family.part_of(n) for n, w in before.items() if not torch.equal(w, after[n])}
    assert changed == {"projector", "llm"}

    write_preference_pairs(tmp_path / "pairs.jsonl", 3)
    dpo = DPOSettings(use_cpu=True, batch_size=3, max_steps=1, logging_steps=1, warmup_ratio=0.0)
    manifest = train_dpo(tmp_path / "sft", tmp_path / "pairs.jsonl", tmp_path / "dpo", dpo, image_root=world)
    assert manifest.counts["pairs"] == 3 and not manifest.counts.get("quarantined")

    backend = TransformersBackend.load(tmp_path / "dpo")
    _, processor = load_llava(tmp_path / "dpo")
    wide = world / RECORDS[1]["image"]
    request = ChatRequest("r", [{"role": "user", "content": "<image>\nWhat is shown?"}], images=[wide])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert backend.prompt_ids(request) == processor(text=prompt, images=Image.open(wide))["input_ids"][0]
    [result] = backend.generate([request], GenerationParams(max_new_tokens=4))
    assert result.error is None and isinstance(result.texts[0], str)
    [probs] = backend.option_probs([request], ["Yes", "No"])  # the yes/no judge's reading
    assert 0 < probs["Yes"] + probs["No"] <= 1

    from vialign.evaluate.run import EvalSettings, run_eval

    settings = EvalSettings(benches=["pope", "vqa", "facts"], limit=3, caption_java=False)
    results = run_eval(str(tmp_path / "dpo"), toyworld / "eval", tmp_path / "eval", settings, toyworld, False)
    for name, entry in results["benchmarks"].items():
        assert entry["n"] == 3 and entry["generation_errors"] == 0, name


def test_reward_model_scores_alike_left_or_right_padded_and_alone(world):
    """A reward model over the family's backbone: candidates' image tokens follow the image as the
    reward model's preprocessing shapes it, and a score does not depend on padding side or batch."""
    from vialign.curate.reward import PreprocessSettings, RewardInputs, RewardModel, answer_text
    from vialign.curate.train import RewardCollator, RewardExample, score_examples

    model, processor = load_llava(world / "model")
    torch.manual_seed(0)
    reward = RewardModel(model).eval()
    inputs = RewardInputs(processor, PreprocessSettings(image_mode="pad"))  # the size a square pads to
    with pytest.raises(ValueError, match="reads images at their own size"):
        RewardInputs(processor, PreprocessSettings(image_mode="resize"))
    examples = []
    for sample in SAMPLES[:4]:
        images = [world / path for path in sample.images]
        texts = [
            answer_text(q, a, len(images)) for q, a in zip(sample.questions, sample.answers, strict=False)
        ]
        examples.append(
            RewardExample(sample.id, [inputs.ids(t, images) for t in texts], images, [], len(texts))
        )
        prepared = [inputs.image(path) for path in images]
        expected = processor(text=IMAGE_TAG_OF[family_of(processor).name], images=prepared)["input_ids"][0]
        image_id = processor.image_token_id
        assert examples[-1].candidates[0].count(image_id) == expected.count(image_id), sample.id
    pad = processor.tokenizer.pad_token_id
    right = score_examples(reward, RewardCollator(pad, inputs, "right"), examples, batch_size=4)
    left = score_examples(reward, RewardCollator(pad, inputs, "left"), examples, batch_size=4)
    alone = score_examples(reward, RewardCollator(pad, inputs, "right"), examples, batch_size=1)
    for r, lp, a in zip(right, left, alone, strict=True):
        assert r == pytest.approx(lp, abs=1e-5) and r == pytest.approx(a, abs=1e-5)
    assert len({round(s, 4) for scores in right for s in scores}) > 1


# one image as each family's processor reads it in text
IMAGE_TAG_OF = {
    "llava-next": IMAGE_TAG,
    "qwen2-vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "idefics3": IMAGE_TAG,
}


def test_model_import_of_a_multimodal_checkpoint_gives_its_language_model_with_the_same_logits(
    world, tiny_model_dir, tmp_path
):
    """The inner LLM a family's checkpoint holds, as a text-only causal LM (rewrite and gap run on it):
    on a text prompt its logits are the multimodal model's. LLaVA-1.5's once, beside LLaVA-NeXT."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vialign.models.importing import import_model

    checkpoints = [world / "model", *([tiny_model_dir] if world.name.startswith("llava-next") else [])]
    for k, checkpoint in enumerate(checkpoints):
        import_model(checkpoint, tmp_path / f"llm{k}")
        multimodal, processor = load_llava(checkpoint)
        llm = AutoModelForCausalLM.from_pretrained(tmp_path / f"llm{k}").eval()
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / f"llm{k}")
        assert tokenizer.chat_template == processor.tokenizer.chat_template
        assert len(tokenizer) == len(processor.tokenizer)
        ids = torch.tensor([tokenizer("Describe the shapes in the scene, please.")["input_ids"]])
        with torch.no_grad():
            expected = multimodal(input_ids=ids).logits
            got = llm(input_ids=ids).logits
        assert torch.allclose(got, expected, atol=1e-5), checkpoint


def test_preview_labels_json_shows_exactly_what_training_trains(world):
    import json

    from typer.testing import CliRunner

    from vialign.cli import app

    args = ["data", "preview-labels", str(world / "train.jsonl"), "--model", str(world / "model"), "-n", "9"]
    result = CliRunner().invoke(app, [*args, "--json", "--templates", "none", "--image-root", str(world)])
    assert result.exit_code == 0, result.output
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    _, encoder = encoder_of(world)
    samples = list(read_samples(world / "train.jsonl"))
    assert [row["id"] for row in shown] == [s.id for s in samples]
    for row, encoded in zip(shown, encoder.encode_many(samples), strict=True):
        assert [t["id"] for t in row["tokens"]] == encoded.input_ids
        assert [t["label"] for t in row["tokens"]] == [label != IGNORE_INDEX for label in encoded.labels]
