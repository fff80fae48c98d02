"""A BPE tokenizer trained locally with `tokenizers`, for the tiny models of the toy world.

Design (see TINY_MODELS.md): newlines are normalised to spaces, a Metaspace pre-tokenizer marks
every word start, and special tokens swallow the whitespace around them. Then encoding a
conversation piece by piece gives exactly the ids of encoding it whole, which the label-mask
encoder relies on. Printable ASCII is in the initial alphabet, so no character maps to `<unk>`.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from vialign.records import IMAGE_TAG, read_samples

UNK, PAD, BOS, EOS = "<unk>", "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, IMAGE_TAG)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA-1.5 (vicuna_v1) layout; message content may be a string or a list of typed parts, as
# transformers' processors pass it.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "') -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}"
    "{%- endif -%}"
    "{{ ns.system }}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set parts = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set parts.text = parts.text + '<image>\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = parts.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{ ' ' if loop.first else '' }}USER: {{ text }}"
    "{%- else %} ASSISTANT: {{ text }}</s>{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt %} ASSISTANT:{%- endif -%}"
)

# Put before a language model's own chat template when it becomes a LLaVA's: processors and trainers
# (transformers, TRL, lmms-eval) pass message content as typed parts; this turns them into the string
# LLaVA writes (`<image>` then a newline, then the text), so a text-only template renders them.
TYPED_CONTENT_PREAMBLE = (
    "{%- set flat = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set flat.messages = flat.messages + [message] -%}"
    "{%- else -%}{%- set parts = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set parts.text = parts.text + '<image>\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set parts.text = parts.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set flat.messages = flat.messages + [{'role': message['role'], 'content': parts.text}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = flat.messages -%}"
)


def with_typed_content(template: str) -> str:
    return template if template.startswith(TYPED_CONTENT_PREAMBLE) else TYPED_CONTENT_PREAMBLE + template


def special_token(text: str) -> AddedToken:
    return AddedToken(text, special=True, normalized=False, lstrip=True, rstrip=True)


def texts_of(paths: Iterable[str | Path]) -> Iterator[str]:
    """Training text: every turn as the chat template renders it, so role tags become tokens too."""
    yield VICUNA_SYSTEM
    for path in paths:
        for k, sample in enumerate(read_samples(path)):
            if k % 100 == 0:
                yield VICUNA_SYSTEM
            turns = sample.conversations
            for q, a in zip(turns[::2], turns[1::2], strict=False):
                yield f"USER: {q.value} ASSISTANT: {a.value}{EOS}"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.normalizer = normalizers.Replace("\n", " ")
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    core.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[special_token(t) for t in SPECIAL_TOKENS],
        initial_alphabet=[*string.printable.strip(), "▁"],
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    # Like Llama's tokenizers, add BOS when special tokens are asked for, so plain-transformers users
    # (lmms-eval's llava_hf: chat template, then the processor) get the prompt vialign trains on.
    bos = (BOS, core.token_to_id(BOS))
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[bos]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token=UNK,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE_TAG},
        model_max_length=2048,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
