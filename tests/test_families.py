"""The encoder on real tokenizers shipped by packages: LLaVA-1.5's (Llama-2 SentencePiece + `<image>`,
`<pad>`), SmolLM2's (byte-level BPE, ChatML), a Llama-3-style template and a llava-hf-style template with
no end-of-turn token. Every sample shape LLaVA-1.5's mix holds is encoded in every mode and compared
with an independent reference: the exact rendering tokenized whole."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from vialign.models.encoding import (
    IGNORE_INDEX,
    TRAINED,
    ChatEncoder,
    EncoderSettings,
    Kind,
    encode_prompt,
)
from vialign.models.families.tokenizers import add_image_token, llava15_tokenizer, smollm2_tokenizer
from vialign.models.tokenizer import VICUNA_SYSTEM
from vialign.records import IMAGE_TAG, Sample, write_jsonl

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
TEMPLATES = frozenset({SHORT, LETTER})

# Records shaped like LLaVA-1.5's 665k mix: image last (LLaVA-Instruct), short-answer VQA, multiple
# choice, region boxes, a text-only ShareGPT conversation with blank lines and indentation.
RECORDS = [
    {
        "id": "000000033471",
        "image": "coco/train2017/000000033471.jpg",
        "conversations": [
            {"from": "human", "value": "What are the colors of the bus in the image?\n<image>"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ],
    },
    {
        "id": "vqav2-458752",
        "image": "coco/train2017/000000458752.jpg",
        "conversations": [
            {"from": "human", "value": f"<image>\nWhat is the man holding?\n{SHORT}"},
            {"from": "gpt", "value": "Kite"},
            {"from": "human", "value": f"How many people are there?\n{SHORT}"},
            {"from": "gpt", "value": "2"},
        ],
    },
    {
        "id": "mc-1",
        "image": "ocr_vqa/images/1.jpg",
        "conversations": [
            {
                "from": "human",
                "value": f"<image>\nWhat is the dog doing?\nA. Running\nB. Sleeping\nC. Eating\n{LETTER}",
            },
            {"from": "gpt", "value": "B"},
        ],
    },
    {
        "id": "vg-77",
        "image": "vg/VG_100K/77.jpg",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nPlease provide a short description for this region: [0.37, 0.4, 0.56, 0.67].",
            },
            {"from": "gpt", "value": "Man in a red shirt."},
            {
                "from": "human",
                "value": "Please provide the bounding box coordinate of the region this sentence describes: white dog.",
            },
            {"from": "gpt", "value": "[0.12, 0.55, 0.33, 0.91]"},
        ],
    },
    {
        "id": "sharegpt-9",
        "conversations": [
            {"from": "human", "value": "Write a haiku about autumn.\nKeep it short."},
            {
                "from": "gpt",
                "value": "Leaves fall softly down\n\nCrisp air whispers through the trees\n  Autumn says goodbye",
            },
        ],
    },
]
SAMPLES = [Sample.model_validate(r) for r in RECORDS]
IMAGE_TOKENS = 5

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# llava-hf's layout: typed content, images before text, no end-of-turn token after an answer.
LLAVA_HF_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def llama3_tokenizer():
    tok = copy.deepcopy(smollm2_tokenizer())
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ]
        }
    )
    tok.bos_token = "<|begin_of_text|>"
    tok.chat_template = LLAMA3_TEMPLATE
    # eos stays <|im_end|>: the end of turn must be read off the template (<|eot_id|>). SmolLM2's
    # GPT-2-style regex splits the prompt's trailing "\n\n" by what follows (Llama-3's own does not), so
    # the encoder must tokenize answers apart from their prompts.
    return tok


def llava_hf_tokenizer():
    tok = copy.deepcopy(llava15_tokenizer())
    tok.chat_template = LLAVA_HF_TEMPLATE
    return tok


CASES = {  # name: (tokenizer factory, chat format)
    "llava-1.5/vicuna_v1": (llava15_tokenizer, "vicuna_v1"),
    "llava-1.5/tokenizer": (llava15_tokenizer, "tokenizer"),
    "llava-hf/tokenizer": (llava_hf_tokenizer, "tokenizer"),
    "smollm2/tokenizer": (smollm2_tokenizer, "tokenizer"),
    "llama3/tokenizer": (llama3_tokenizer, "tokenizer"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    factory, chat_format = CASES[request.param]
    return request.param, factory(), chat_format


def vicuna_v1_prompt(pairs):
    """LLaVA-1.5's conv_vicuna_v1 (sep ' ', sep2 '</s>'), written out independently of vialign."""
    text, seps = VICUNA_SYSTEM + " ", [" ", "</s>"]
    for q, a in pairs:
        text += "USER: " + q + seps[0]
        text += "ASSISTANT: " + a + seps[1] if a is not None else "ASSISTANT:"
    return text


def template_prompt(tok, name, pairs):
    """The checkpoint's own chat template; for a template that writes no end-of-turn token, the EOS
    vialign adds is written after each answer."""
    typed = name.startswith("llava")
    messages = []
    for q, a in pairs:
        turns = [("user", q)] + (
            [("assistant", a + ("</s>" if name == "llava-hf" else ""))] if a is not None else []
        )
        for role, text in turns:
            messages.append({"role": role, "content": [{"type": "text", "text": text}] if typed else text})
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=pairs[-1][1] is None)


def reference_ids(tok, case_name, chat_format, pairs, answers_apart=False):
    """The rendering tokenized whole, BOS first; where the encoder tokenizes answers apart, cut where
    each answer's generation prompt ends (each such prompt is checked to be a prefix of the whole)."""
    family = case_name.split("/")[0]

    def render(turns):
        return vicuna_v1_prompt(turns) if chat_format == "vicuna_v1" else template_prompt(tok, family, turns)

    text, cuts = render(pairs), [0]
    for k, (q, a) in enumerate(pairs):
        if answers_apart and a is not None:
            prompt = render([*pairs[:k], (q, None)])
            assert text.startswith(prompt)
            cuts.append(len(prompt))
    bos = [tok.bos_token_id] if tok.bos_token and not text.startswith(tok.bos_token) else []
    ids = bos + [
        t
        for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True)
        for t in tok(text[a:b], add_special_tokens=False)["input_ids"]
    ]
    image_id = tok.convert_tokens_to_ids(IMAGE_TAG)
    return [t for i in ids for t in ([i] * IMAGE_TOKENS if i == image_id else [i])]


def llava_placed(question):
    """LLaVA-1.5's `preprocess_multimodal`, written out: the turn's image tags taken out, then one
    "<image>\n" per tag in front of the stripped text."""
    n = question.count(IMAGE_TAG)
    return (IMAGE_TAG + "\n") * n + question.replace(IMAGE_TAG, "").strip() if n else question


def pairs_of(sample, place=llava_placed):
    turns = sample.conversations
    return [(place(turns[i].value), turns[i + 1].value) for i in range(0, len(turns), 2)]


def spans(encoded, kind):
    """Runs of consecutive tokens of one kind."""
    out, current = [], None
    for t, k in zip(encoded.input_ids, encoded.kinds, strict=True):
        if k != kind:
            current = None
            continue
        if current is None:
            current = []
            out.append(current)
        current.append(t)
    return out


def without_templates(question):
    lines = [line for line in question.replace(IMAGE_TAG, "").split("\n") if line.strip() not in TEMPLATES]
    return " ".join(" ".join(lines).split())


@pytest.mark.parametrize("mode", ["response", "lit", "all"])
@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_real_tokenizer_ids_equal_the_whole_rendering_and_labels_are_exact(case, sample, mode):
    name, tok, chat_format = case
    settings = EncoderSettings(
        chat_format=chat_format, mode=mode, image_tokens=IMAGE_TOKENS, templates=TEMPLATES
    )
    encoder = ChatEncoder(tok, settings)
    encoded = encoder.encode(sample)
    pairs = pairs_of(sample)
    assert encoder.answers_apart == (name == "llama3/tokenizer")
    assert encoded.input_ids == reference_ids(tok, name, chat_format, pairs, encoder.answers_apart)

    trained = TRAINED[mode]
    assert encoded.labels == [
        t if k in trained else IGNORE_INDEX for t, k in zip(encoded.input_ids, encoded.kinds, strict=True)
    ]
    answers = [tok.decode(ids).strip() for ids in spans(encoded, Kind.ASSISTANT)]
    assert answers == [a.strip() for _, a in pairs]
    ends = spans(encoded, Kind.END)
    assert len(ends) == len(pairs) and all(end for end in ends)
    end_tokens = {"llava-1.5": "</s>", "llava-hf": "</s>", "smollm2": "<|im_end|>", "llama3": "<|eot_id|>"}
    assert all(tok.convert_tokens_to_ids(end_tokens[name.split("/")[0]]) in end for end in ends)
    image_id = tok.convert_tokens_to_ids(IMAGE_TAG)
    for t, k, label in zip(encoded.input_ids, encoded.kinds, encoded.labels, strict=True):
        assert (k == Kind.IMAGE) == (t == image_id)
        if mode != "all" and label != IGNORE_INDEX:
            assert k in (Kind.ASSISTANT, Kind.END, Kind.USER)
    user = " ".join(tok.decode(ids) for ids in spans(encoded, Kind.USER))
    assert " ".join(user.split()) == " ".join(without_templates(q) for q, _ in pairs)
    templates = " ".join(tok.decode(ids) for ids in spans(encoded, Kind.TEMPLATE))
    assert " ".join(templates.split()) == " ".join(t for q, _ in pairs for t in (SHORT, LETTER) if t in q)


def test_image_last_record_trains_image_first_as_llava_does_unless_asked_not_to(case):
    name, tok, chat_format = case
    sample = next(s for s in SAMPLES if s.conversations[0].value.endswith(IMAGE_TAG))
    for image_first, place in ((True, llava_placed), (False, str)):
        settings = EncoderSettings(
            chat_format=chat_format, image_tokens=IMAGE_TOKENS, image_first=image_first
        )
        encoder = ChatEncoder(tok, settings)
        pairs = pairs_of(sample, place)
        assert encoder.encode(sample).input_ids == reference_ids(
            tok, name, chat_format, pairs, encoder.answers_apart
        )
    question = sample.conversations[0].value
    assert (
        llava_placed(question).startswith(IMAGE_TAG + "\n") and IMAGE_TAG not in question[: -len(IMAGE_TAG)]
    )


@pytest.mark.parametrize("sample", SAMPLES, ids=[s.id for s in SAMPLES])
def test_generation_prompt_is_the_training_prefix_and_the_reference(case, sample):
    name, tok, chat_format = case
    encoder = ChatEncoder(tok, EncoderSettings(chat_format=chat_format, image_tokens=IMAGE_TOKENS))
    training = encoder.encode(sample).input_ids
    pairs = pairs_of(sample)
    for k in range(len(pairs)):
        prompt = encode_prompt(encoder, pairs[k][0], pairs[:k])
        assert prompt == reference_ids(
            tok, name, chat_format, [*pairs[:k], (pairs[k][0], None)], encoder.answers_apart
        )
        assert training[: len(prompt)] == prompt


def test_chatml_newline_after_role_header_is_not_trained():
    tok = smollm2_tokenizer()
    encoder = ChatEncoder(
        tok, EncoderSettings(chat_format="tokenizer", mode="lit", image_tokens=IMAGE_TOKENS)
    )
    encoded = encoder.encode(SAMPLES[1])
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert len(newline) == 1
    starts = [i for i, t in enumerate(encoded.input_ids) if t == tok.convert_tokens_to_ids("<|im_start|>")]
    assert len(starts) == 5  # system, user, assistant, user, assistant
    for i in starts:  # <|im_start|>, the role name (one or two tokens), then the newline
        at = encoded.input_ids.index(newline[0], i)
        assert at - i in (2, 3) and encoded.labels[at] == IGNORE_INDEX
        assert encoded.kinds[at] in (Kind.ROLE, Kind.SYSTEM)


def test_llava15_processor_prompt_equals_the_encoder_prompt(tmp_path):
    """Inference through plain transformers (chat template with typed parts, then the processor)
    feeds the ids vialign trains on."""
    from PIL import Image

    from vialign.models.loading import build_tiny_model, load_llava, processor_image_tokens
    from vialign.models.tiny import TinyModelSettings

    build_tiny_model(None, tmp_path / "m", TinyModelSettings(family="llava-1.5"))
    model, processor = load_llava(tmp_path / "m")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the man holding?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(images=Image.new("RGB", (48, 48)), text=prompt, return_tensors="pt")
    encoder = ChatEncoder(
        processor.tokenizer, EncoderSettings(image_tokens=processor_image_tokens(processor))
    )
    assert batch["input_ids"][0].tolist() == encode_prompt(encoder, "<image>\nWhat is the man holding?")
    assert model(**batch).logits.shape[-1] == len(processor.tokenizer) == 32002


@pytest.mark.parametrize("family", ["llava-1.5", "smollm2"])
def test_preview_labels_json_on_real_records(tmp_path, family):
    from vialign.cli import app
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    build_tiny_model(None, tmp_path / "m", TinyModelSettings(family=family))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    templates = tmp_path / "templates.json"
    templates.write_text(
        json.dumps({"min_frac": 0.1, "templates": [{"sentence": t} for t in sorted(TEMPLATES)]})
    )
    chat_format = "vicuna_v1" if family == "llava-1.5" else "tokenizer"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "preview-labels",
            str(data),
            "--model",
            str(tmp_path / "m"),
            "--format",
            chat_format,
            "--templates",
            str(templates),
            "--json",
            "-n",
            "9",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    assert all(r["quarantined"] is None for r in rows)
    for r in rows:
        roles = {t["role"] for t in r["tokens"]}
        assert roles <= {"bos", "system", "role", "user", "template", "image", "assistant", "end"}
        assert all(t["label"] == (t["role"] in ("user", "assistant", "end")) for t in r["tokens"])
        text = "".join(t["text"] for t in r["tokens"] if t["role"] == "assistant")
        record = next(x for x in RECORDS if x["id"] == r["id"])
        answers = "".join(t["value"] for t in record["conversations"][1::2])
        assert "".join(text.split()) == "".join(answers.split())


def test_smollm2_tokenizer_is_cached_after_the_first_conversion(tmp_path, monkeypatch):
    from vialign.models.families import tokenizers as families

    monkeypatch.setenv("VIALIGN_CACHE", str(tmp_path))
    first = families.smollm2_tokenizer()
    monkeypatch.setattr(families, "smollm2_gguf", lambda: pytest.fail("converted twice"))
    again = families.smollm2_tokenizer()
    assert first("Hello\nworld")["input_ids"] == again("Hello\nworld")["input_ids"]
    assert again.convert_tokens_to_ids(IMAGE_TAG) == len(again) - 1


def test_image_token_is_one_special_token():
    for tok in (llava15_tokenizer(), add_image_token(copy.deepcopy(smollm2_tokenizer()))):
        ids = tok("x <image>\ny", add_special_tokens=False)["input_ids"]
        assert ids.count(tok.convert_tokens_to_ids(IMAGE_TAG)) == 1


@pytest.mark.slow
def test_imported_smollm2_computes_what_the_gguf_does(smollm2_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vialign.models.families.tokenizers import smollm2_gguf

    gguf = smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    imported = AutoModelForCausalLM.from_pretrained(str(smollm2_checkpoint), use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(smollm2_checkpoint))
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What colour is the sky?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        assert torch.allclose(imported(ids).logits, reference(ids).logits, atol=1e-5)
        answer = imported.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1] :]
    assert "blue" in tok.decode(answer).lower()
    manifest = json.loads((smollm2_checkpoint / "manifest.json").read_text())
    assert manifest["stage"] == "model.import" and manifest["counts"]["parameters"] > 100_000_000


def test_model_import_refuses_what_it_cannot_read(tmp_path):
    from vialign.cli import app

    (tmp_path / "notes.txt").write_text("x")
    result = CliRunner().invoke(
        app, ["model", "import", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not a .gguf file" in result.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- training and generation on real tokenizers


@pytest.fixture(scope="module")
def real_world(tmp_path_factory):
    """The real-format records with small JPEGs at their LLaVA paths, and a tiny LLaVA-1.5-family model."""
    from PIL import Image

    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    root = tmp_path_factory.mktemp("real")
    for k, record in enumerate(RECORDS):
        if "image" in record:
            (root / record["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (40 * k, 90, 200 - 30 * k)).save(root / record["image"])
    write_jsonl(SAMPLES * 2, root / "train.jsonl")
    build_tiny_model(None, root / "llava15", TinyModelSettings(family="llava-1.5"))
    return root


def test_lit_sft_trains_on_llava15_family_without_quarantine(real_world, tmp_path):
    import torch
    from transformers import LlavaForConditionalGeneration

    from vialign.models.families.llava import LLAVA
    from vialign.train.settings import SFTSettings
    from vialign.train.sft import train_sft

    settings = SFTSettings(
        stage="finetune",
        use_cpu=True,
        lr=1e-3,
        warmup_ratio=0.0,
        scheduler="constant",
        logging_steps=1,
        batch_size=4,
        max_steps=3,
    )
    manifest = train_sft(
        real_world / "llava15", real_world / "train.jsonl", tmp_path / "sft", settings, image_root=real_world
    )
    assert manifest.counts["quarantined"] == 0 and manifest.counts["encoded"] == len(SAMPLES) * 2
    losses = [
        r["loss"] for r in json.loads((tmp_path / "sft" / "log_history.json").read_text()) if "loss" in r
    ]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    before = LlavaForConditionalGeneration.from_pretrained(real_world / "llava15").state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(tmp_path / "sft").state_dict()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]) == name.startswith(LLAVA.parts["vision"]), name


def write_preference_pairs(path, n: int) -> None:
    """The first `n` records' first questions, their answers chosen over a refusal to look."""
    pairs = [
        {
            "id": f"p{k}",
            "image": RECORDS[k]["image"],
            "conversations": [RECORDS[k]["conversations"][0]],
            "chosen": RECORDS[k]["conversations"][1]["value"],
            "rejected": "I cannot see anything.",
        }
        for k in range(n)
    ]
    write_jsonl([Sample.model_validate(p) for p in pairs], path)


def test_dpo_trains_on_llava15_family(real_world, tmp_path):
    from vialign.train.dpo import DPOSettings, train_dpo

    write_preference_pairs(tmp_path / "pairs.jsonl", 4)
    settings = DPOSettings(use_cpu=True, batch_size=2, max_steps=2, logging_steps=1, warmup_ratio=0.0)
    manifest = train_dpo(
        real_world / "llava15", tmp_path / "pairs.jsonl", tmp_path / "dpo", settings, image_root=real_world
    )
    assert manifest.counts["pairs"] == 4 and not manifest.counts.get("quarantined")
    assert list((tmp_path / "dpo" / "ref_cache").glob("*.jsonl"))


def test_generation_on_llava15_family_feeds_the_processors_prompt(real_world):
    from vialign.generation.base import ChatRequest, GenerationParams
    from vialign.generation.local import TransformersBackend

    backend = TransformersBackend.load(real_world / "llava15")
    request = ChatRequest(
        "r",
        [{"role": "user", "content": "<image>\nWhat is shown?"}],
        images=[real_world / RECORDS[1]["image"]],
    )
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(real_world / "llava15")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    expected = processor(
        text=processor.apply_chat_template(messages, add_generation_prompt=True),
        images=__import__("PIL.Image").Image.new("RGB", (48, 48)),
    )["input_ids"][0]
    assert backend.prompt_ids(request) == list(expected)
    [result] = backend.generate([request], GenerationParams(max_new_tokens=6))
    assert result.error is None and isinstance(result.texts[0], str)


@pytest.mark.slow
def test_smollm2_inner_llm_answers_through_the_transformers_backend(smollm2_checkpoint):
    from transformers import AutoTokenizer

    from vialign.generation.base import ChatRequest, GenerationParams
    from vialign.generation.local import TransformersBackend

    backend = TransformersBackend.load(smollm2_checkpoint, chat_format="tokenizer")
    messages = [{"role": "user", "content": "What colour is the sky on a clear day? Answer in one word."}]
    tok = AutoTokenizer.from_pretrained(str(smollm2_checkpoint))
    assert (
        backend.prompt_ids(ChatRequest("q", messages))
        == tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    )
    [result] = backend.generate([ChatRequest("q", messages)], GenerationParams(max_new_tokens=24))
    assert "blue" in result.texts[0].lower()


@pytest.mark.slow
def test_smollm2_gap_prefers_its_own_fluent_text_to_shuffled_words(smollm2_checkpoint):
    from vialign.align.gap import answer_nll

    fluent = "The sky is blue on a clear day because air scatters blue light more than red light."
    shuffled = "light blue day red more the a than clear air on scatters because sky is blue light The."
    samples = [
        Sample.model_validate(
            {
                "id": i,
                "conversations": [
                    {"from": "human", "value": "Why is the sky blue?"},
                    {"from": "gpt", "value": text},
                ],
            }
        )
        for i, text in (("fluent", fluent), ("shuffled", shuffled))
    ]
    rows = {r["id"]: r for r in answer_nll(smollm2_checkpoint, samples, chat_format="tokenizer").per_sample}
    tok_count = len(
        __import__("transformers").AutoTokenizer.from_pretrained(str(smollm2_checkpoint))(" " + fluent)[
            "input_ids"
        ]
    )
    assert abs(rows["fluent"]["tokens"] - tok_count) <= 1
    assert rows["fluent"]["nll"] + 1.0 < rows["shuffled"]["nll"]


def test_an_assembled_llava_renders_typed_content_as_llava_writes_it(tmp_path):
    """TRL, lmms-eval and processors pass content as typed parts; a text-only template (ChatML) must render
    them as `<image>` + newline + text, exactly as the string the encoder renders."""
    from transformers import AutoProcessor, LlamaConfig, LlamaForCausalLM

    from vialign.models.assemble import assemble_llava
    from vialign.models.tiny import TinyModelSettings

    tok = smollm2_tokenizer()
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    assemble_llava(tmp_path / "lm", TinyModelSettings(), tmp_path / "llava")
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    text = [{"role": "user", "content": "<image>\nWhat is here?"}, {"role": "assistant", "content": "A dog."}]
    typed = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
    ]
    rendered = processor.apply_chat_template(typed, tokenize=False)
    assert (
        rendered
        == processor.apply_chat_template(text, tokenize=False)
        == tok.apply_chat_template(text, tokenize=False)
    )
    assert "<|im_start|>user\n<image>\nWhat is here?<|im_end|>" in rendered
