"""Exact label masks on the toy tokenizer: hand-written conversations in every mode, and a property
check over toy-world samples that LIT never trains image, role, system or template tokens."""

import pytest

from vialign.data.templates import find_templates
from vialign.models.encoding import (
    IGNORE_INDEX,
    ChatEncoder,
    EncoderSettings,
    EncodingError,
    Kind,
    encode_all,
)
from vialign.models.tokenizer import VICUNA_SYSTEM, texts_of, train_tokenizer
from vialign.records import Sample, read_samples

TEMPLATE = "Answer the question using a single word or phrase."


@pytest.fixture(scope="module")
def tok(toyworld):
    return train_tokenizer(
        texts_of([toyworld / "corpus.jsonl", toyworld / "text" / "corpus.jsonl"]), vocab_size=400
    )


def conv(*turns, image="a.png"):
    roles = ["human", "gpt"]
    return Sample.model_validate(
        {
            "id": "s",
            "image": image,
            "conversations": [{"from": roles[i % 2], "value": v} for i, v in enumerate(turns)],
        }
    )


def encoder(tok, mode, **kw):
    return ChatEncoder(tok, EncoderSettings(mode=mode, image_tokens=4, templates=frozenset({TEMPLATE}), **kw))


def expected(tok, pieces, mode):
    """pieces: (kind, text) in order; builds ids and labels by hand from the kinds."""
    trained = {
        "response": {"A", "E"},
        "lit": {"A", "E", "U"},
        "all": {"B", "S", "R", "I", "T", "U", "A", "E"},
    }[mode]
    ids, labels = [], []
    for kind, text in pieces:
        if kind == "B":
            piece = [tok.bos_token_id]
        elif kind == "I":
            piece = [tok.convert_tokens_to_ids("<image>")] * 4
        elif kind == "E":
            piece = [tok.eos_token_id]
        else:
            piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if kind in trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


MULTI_TURN_IMAGE_FIRST = (
    conv("<image>\nWhat is it?", "A red circle.", "Where is it? " + TEMPLATE, "Top left"),
    [
        ("B", ""),
        ("S", VICUNA_SYSTEM),
        ("R", "USER:"),
        ("I", ""),
        ("U", "What is it?"),
        ("R", "ASSISTANT:"),
        ("A", "A red circle."),
        ("E", ""),
        ("R", "USER:"),
        ("U", "Where is it?"),
        ("T", TEMPLATE),
        ("R", "ASSISTANT:"),
        ("A", "Top left"),
        ("E", ""),
    ],
)
IMAGE_LAST = (
    conv("How many circles?\n" + TEMPLATE + "\n<image>", "2"),
    [
        ("B", ""),
        ("S", VICUNA_SYSTEM),
        ("R", "USER:"),
        ("I", ""),  # moved first, as LLaVA-1.5 trains it
        ("U", "How many circles?"),
        ("T", TEMPLATE),
        ("R", "ASSISTANT:"),
        ("A", "2"),
        ("E", ""),
    ],
)
TEXT_ONLY = (
    conv("What is 2 plus 3? Think.", "2 plus 3 is 5.", image=None),
    [
        ("B", ""),
        ("S", VICUNA_SYSTEM),
        ("R", "USER:"),
        ("U", "What is 2 plus 3?"),
        ("U", "Think."),
        ("R", "ASSISTANT:"),
        ("A", "2 plus 3 is 5."),
        ("E", ""),
    ],
)


@pytest.mark.parametrize("mode", ["response", "lit", "all"])
@pytest.mark.parametrize(
    "case", [MULTI_TURN_IMAGE_FIRST, IMAGE_LAST, TEXT_ONLY], ids=["multi-turn", "image-last", "text-only"]
)
def test_exact_labels_in_each_mode(tok, case, mode):
    sample, pieces = case
    encoded = encoder(tok, mode).encode(sample)
    ids, labels = expected(tok, pieces, mode)
    assert encoded.input_ids == ids
    assert encoded.labels == labels


def test_image_first_false_trains_the_record_as_written(tok):
    sample, pieces = IMAGE_LAST
    image = pieces.index(("I", ""))
    as_written = [*pieces[:image], *pieces[image + 1 : image + 3], ("I", ""), *pieces[image + 3 :]]
    assert [k for k, _ in as_written] == ["B", "S", "R", "U", "T", "I", "R", "A", "E"]
    encoded = encoder(tok, "lit", image_first=False).encode(sample)
    assert (encoded.input_ids, encoded.labels) == expected(tok, as_written, "lit")


def test_system_prompt_is_never_trained_even_in_lit(tok):
    sample, _ = MULTI_TURN_IMAGE_FIRST
    encoded = encoder(tok, "lit").encode(sample)
    system = tok(VICUNA_SYSTEM, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[1 : 1 + len(system)] == system
    assert encoded.labels[: 1 + len(system)] == [IGNORE_INDEX] * (1 + len(system))


def test_plain_format_for_projector_pretraining(tok):
    sample = conv("<image>\nDescribe the image briefly.", "A red circle at top left.")
    encoded = ChatEncoder(tok, EncoderSettings(chat_format="plain", mode="response", image_tokens=4)).encode(
        sample
    )
    ids, labels = expected(
        tok, [("B", ""), ("I", ""), ("A", "A red circle at top left."), ("E", "")], "response"
    )
    assert (encoded.input_ids, encoded.labels) == (ids, labels)


def test_truncation_drops_whole_trailing_turns(tok):
    sample, _ = MULTI_TURN_IMAGE_FIRST
    full = encoder(tok, "lit").encode(sample)
    first_turn_end = full.input_ids.index(tok.eos_token_id) + 1
    cut = encoder(tok, "lit", max_length=first_turn_end + 3).encode(sample)
    assert cut.input_ids == full.input_ids[:first_turn_end] and cut.dropped_turns == 1
    assert cut.labels == full.labels[:first_turn_end]


def test_too_long_and_mismatched_samples_are_quarantined_with_counts(tok):
    def named(sample_id, sample):
        return sample.model_copy(update={"id": sample_id})

    good = named("good", conv("<image>\nWhat?", "A circle."))
    long = named("long", conv("<image>\n" + "Tell me about the red circle. " * 20, "It is red."))
    twin = named("twin", conv("<image>\n<image>\nCompare.", "Same."))
    limit = len(encoder(tok, "lit").encode(good)) + 5
    enc = encoder(tok, "lit", max_length=limit)
    with pytest.raises(EncodingError, match="longer than max_length"):
        enc.encode(long)
    encoded, report = encode_all(enc, [good, long, twin, named("good2", good)])
    assert [s.id for s, _ in encoded] == ["good", "good2"] and report.encoded == 2
    assert set(report.quarantined) == {"long", "twin"}
    assert "max_length" in report.quarantined["long"] and "<image> tags" in report.quarantined["twin"]


def test_image_tag_count_mismatch_raises(tok):
    with pytest.raises(EncodingError, match="<image> tags"):
        encoder(tok, "lit").encode(conv("<image>\n<image>\nCompare.", "Same."))


def test_no_trained_token_raises_instead_of_silent_zero_loss(tok):
    with pytest.raises(EncodingError, match="no token is trained"):
        ChatEncoder(tok, EncoderSettings(chat_format="plain", mode="response", image_tokens=4)).encode(
            conv("<image>\nq", "x", image="a.png").model_copy(
                update={"conversations": conv("<image>\nq", "x").conversations[:1]}
            )
        )


def test_lit_property_over_toyworld(toyworld, tok):
    samples = list(read_samples(toyworld / "corpus.jsonl"))
    templates = frozenset(r["sentence"] for r in find_templates(samples, 0.05)["templates"])
    assert TEMPLATE in templates
    enc = ChatEncoder(tok, EncoderSettings(mode="lit", image_tokens=9, templates=templates))
    encoded, report = encode_all(enc, samples)
    assert report.encoded == len(samples) and not report.quarantined
    role_ids = {
        tok("USER:", add_special_tokens=False)["input_ids"][0],
        tok("ASSISTANT:", add_special_tokens=False)["input_ids"][0],
    }
    image_id = tok.convert_tokens_to_ids("<image>")
    for sample, e in encoded:
        trained_kinds = {k for k, label in zip(e.kinds, e.labels, strict=True) if label != IGNORE_INDEX}
        assert trained_kinds <= {Kind.USER, Kind.ASSISTANT, Kind.END}
        trained_ids = {t for t, label in zip(e.input_ids, e.labels, strict=True) if label != IGNORE_INDEX}
        assert image_id not in trained_ids and not (role_ids & trained_ids)
        spans = labelled_spans(e)
        answers = [tok.decode(ids) for kind, ids in spans if kind == Kind.ASSISTANT]
        assert answers == [" ".join(a.split()) for a in sample.answers]
        user_text = " ".join(tok.decode(ids) for kind, ids in spans if kind == Kind.USER)
        expected_user = " ".join(s for q in sample.questions for s in _sentences(q) if s not in templates)
        assert user_text == expected_user


def _sentences(q):
    from vialign.models.encoding import sentences

    return sentences(q)


def labelled_spans(e):
    spans, current = [], None
    for t, k, label in zip(e.input_ids, e.kinds, e.labels, strict=True):
        if label == IGNORE_INDEX or k == Kind.END:
            current = None
            continue
        if current is None or current[0] != k:
            current = (k, [])
            spans.append(current)
        current[1].append(t)
    return spans


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


@pytest.mark.parametrize("mode", ["response", "lit", "all"])
def test_tokenizer_template_format_matches_vicuna_for_a_vicuna_template(tok, mode):
    for sample, _ in (MULTI_TURN_IMAGE_FIRST, IMAGE_LAST, TEXT_ONLY):
        via_template = encoder(tok, mode, chat_format="tokenizer").encode(sample)
        vicuna = encoder(tok, mode).encode(sample)
        assert (via_template.input_ids, via_template.labels) == (vicuna.input_ids, vicuna.labels)
    from vialign.models.encoding import encode_prompt

    assert encode_prompt(encoder(tok, "lit", chat_format="tokenizer"), "<image>\nWhat?") == encode_prompt(
        encoder(tok, "lit"), "<image>\nWhat?"
    )


def test_tokenizer_template_format_follows_another_template(tok):
    chatml = copy_with_template(tok, CHATML)
    sample, _ = MULTI_TURN_IMAGE_FIRST
    # Its generation prompt ends in a space, which this tokenizer folds into the answer's first word; a
    # word-start-marking tokenizer cannot tokenize answers apart, so the whole string stays, with a warning.
    with pytest.warns(UserWarning, match="keeps the whole string"):
        encoder = ChatEncoder(
            chatml,
            EncoderSettings(
                chat_format="tokenizer",
                mode="lit",
                image_tokens=4,
                templates=frozenset({TEMPLATE}),
                eos_after_answer=False,
            ),
        )
    encoded = encoder.encode(sample)
    messages = [
        {"role": "user" if t.role == "human" else "assistant", "content": t.value}
        for t in sample.conversations
    ]
    rendered = chatml.apply_chat_template(messages, tokenize=False)
    whole = [
        t
        for i in chatml(rendered, add_special_tokens=False)["input_ids"]
        for t in ([i] * 4 if i == chatml.convert_tokens_to_ids("<image>") else [i])
    ]
    assert encoded.input_ids == [chatml.bos_token_id, *whole]
    spans = labelled_spans(encoded)
    assert [chatml.decode(ids) for kind, ids in spans if kind == Kind.ASSISTANT] == [
        "A red circle.",
        "Top left",
    ]
    ends = [
        chatml.decode([t]) for t, k in zip(encoded.input_ids, encoded.kinds, strict=True) if k == Kind.END
    ]
    assert "".join(ends).replace(" ", "") == "<|im_end|><|im_end|>"
    assert [chatml.decode(ids) for kind, ids in spans if kind == Kind.USER] == ["What is it?", "Where is it?"]


def test_template_that_rewrites_content_is_refused(tok):
    upper = copy_with_template(tok, "{% for m in messages %}{{ m['content'] | upper }} {% endfor %}")
    with pytest.raises(ValueError, match="verbatim"):
        ChatEncoder(upper, EncoderSettings(chat_format="tokenizer", image_tokens=4))


def copy_with_template(tok, template):
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = template
    return other


def test_a_sentence_only_one_sample_asks_is_never_a_template():
    samples = [conv(f"Describe picture {i}.\nBe brief.", "ok") for i in range(4)] + [conv("Only mine.", "x")]
    found = {r["sentence"]: r["count"] for r in find_templates(samples, 0.05)["templates"]}
    assert found == {"Be brief.": 4}
