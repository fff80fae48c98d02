"""The likelihood a local model gives a sample's answers, text only (image tags removed): the
writing-manner gap and the drift benchmark both measure it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from vialign.generation.local import TransformersBackend
from vialign.models.encoding import IGNORE_INDEX, ChatEncoder, EncoderSettings, EncodingError, Kind
from vialign.records import IMAGE_TAG, Sample, Turn


def text_only(sample: Sample) -> Sample:
    turns = [
        Turn(role=t.role, value=" ".join(t.value.replace(IMAGE_TAG, " ").split()))
        for t in sample.conversations
    ]
    return Sample(id=sample.id, conversations=turns)


@torch.no_grad()
def answer_nll_rows(
    backend: TransformersBackend, samples: Iterable[Sample], *, chat_format: str, batch_size: int = 16
) -> list[dict[str, Any]]:
    """Per sample, the mean per-token NLL of its answers (text only) and their token count."""
    model, tokenizer = backend.model, backend.tokenizer
    encoder = ChatEncoder(
        tokenizer, EncoderSettings(chat_format=chat_format, mode="response", image_tokens=0)
    )
    encoded = []
    for sample in samples:
        try:
            e = encoder.encode(text_only(sample))
        except EncodingError:
            continue
        answer_only = [
            t if k == Kind.ASSISTANT else IGNORE_INDEX for t, k in zip(e.input_ids, e.kinds, strict=True)
        ]
        encoded.append((sample.id, e.input_ids, answer_only))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        input_ids = torch.tensor(
            [ids + [pad] * (width - len(ids)) for _, ids, _ in chunk], device=model.device
        )
        labels = torch.tensor(
            [lab + [IGNORE_INDEX] * (width - len(lab)) for _, _, lab in chunk], device=model.device
        )
        mask = (
            torch.arange(width, device=model.device)[None, :]
            < torch.tensor([len(i) for _, i, _ in chunk], device=model.device)[:, None]
        ).long()
        with backend.autocast():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target.clamp(min=0), reduction="none")
        valid = target != IGNORE_INDEX
        for k, (sample_id, _, _) in enumerate(chunk):
            n = int(valid[k].sum())
            if n:
                rows.append({"id": sample_id, "nll": float(nll[k][valid[k]].mean()), "tokens": n})
    return rows
