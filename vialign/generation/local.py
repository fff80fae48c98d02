"""Local batched generation with transformers: left padding, greedy or sampled, images per request.

Prompts are encoded by the same `ChatEncoder` as training, so a model is asked exactly the way it was
taught. The checkpoint may be a LLaVA (images allowed) or a plain causal LM (the inner LLM).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from vialign.generation.base import ChatRequest, ChatResult, GenerationParams
from vialign.models.encoding import ChatEncoder, EncoderSettings, encode_prompt
from vialign.models.families import family_of
from vialign.models.families.base import ImageSpansOf
from vialign.models.loading import load_llava, model_fingerprint, processor_image_tokens
from vialign.models.precision import (
    ComputeDtype,
    Dtype,
    autocast,
    default_device,
    resolve_dtype,
    weight_dtype,
)


def is_multimodal_checkpoint(path: str | Path) -> bool:
    config = orjson.loads((Path(path) / "config.json").read_bytes())
    return "vision_config" in config


def split_messages(messages: list[dict[str, str]]) -> tuple[str, list[tuple[str, str]]]:
    """(final question, earlier turns). A system message is put before the first question."""
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("a request must end with a user message")
    users, answers = turns[0::2], turns[1::2]
    if any(m["role"] != "user" for m in users) or any(m["role"] != "assistant" for m in answers):
        raise ValueError("messages must alternate user and assistant")
    questions = [m["content"] for m in users]
    if system:
        questions[0] = f"{system}\n{questions[0]}"
    return questions[-1], list(zip(questions[:-1], [m["content"] for m in answers], strict=True))


class TransformersBackend:
    name = "transformers"

    def __init__(
        self,
        model,
        tokenizer,
        image_processor,
        encoder: ChatEncoder,
        path: str = "(in memory)",
        compute: ComputeDtype = "float32",
        image_inputs: Sequence[str] = ("pixel_values",),
        image_spans: ImageSpansOf | None = None,
        model_inputs: Callable[[dict, list | None], dict] | None = None,
    ):
        """`image_inputs`, `image_spans`, `model_inputs`: the model family's (`ModelFamily.image_inputs`,
        its image-dependent image tokens where they vary, `ModelFamily.model_inputs`)."""
        self.model, self.tokenizer, self.image_processor, self.encoder, self.path = (
            model,
            tokenizer,
            image_processor,
            encoder,
            path,
        )
        self.compute, self.image_inputs, self.image_spans = compute, tuple(image_inputs), image_spans
        self.model_inputs = model_inputs
        self._fingerprint: str | None = None
        self._option_ids: dict[str, list[int]] = {}

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        chat_format: str = "vicuna_v1",
        device: str | None = None,
        dtype: Dtype = "auto",
    ) -> TransformersBackend:
        device = default_device(device)
        compute = resolve_dtype(dtype, device)
        weights = weight_dtype(compute, device)
        if is_multimodal_checkpoint(path):
            model, processor = load_llava(path, device=device, dtype=weights)
            return cls.of_model(model, processor, chat_format, str(path), compute)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModelForCausalLM.from_pretrained(
                str(path), use_safetensors=True, dtype=weights
            ).eval()
            model = model.to(device)
        encoder = ChatEncoder(tokenizer, EncoderSettings(chat_format=chat_format, image_tokens=0))
        return cls(model, tokenizer, None, encoder, str(path), compute)

    @classmethod
    def of_model(
        cls,
        model,
        processor,
        chat_format: str = "vicuna_v1",
        path: str = "(in memory)",
        compute: ComputeDtype = "float32",
        encoder: ChatEncoder | None = None,
    ) -> TransformersBackend:
        """A backend over a multimodal model and its processor, as its family takes images."""
        family = family_of(processor)
        fixed = family.fixed_image_tokens
        if encoder is None:
            image_tokens = processor_image_tokens(processor) if fixed else 0
            encoder = ChatEncoder(
                processor.tokenizer,
                EncoderSettings(
                    **family.encoder_fields(),
                    chat_format=family.chat_format(chat_format),
                    image_tokens=image_tokens,
                ),
            )
        spans = None if fixed else ImageSpansOf(family, processor, None)
        return cls(
            model,
            processor.tokenizer,
            processor.image_processor,
            encoder,
            path,
            compute,
            family.image_inputs,
            spans,
            family.model_inputs(processor),
        )

    def autocast(self):
        return autocast(self.compute, self.model.device)

    def identity(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.path) if Path(self.path).is_dir() else "unknown"
        return {
            "backend": self.name,
            "model": self.path,
            "fingerprint": self._fingerprint,
            "chat_format": self.encoder.settings.chat_format,
            "compute_dtype": self.compute,
        }

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        question, history = split_messages(request.messages)
        spans = self.image_spans.of_files(request.images) if self.image_spans else None
        return encode_prompt(self.encoder, question, history, spans)

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[ChatResult]:
        results: dict[str, ChatResult] = {}
        ready: list[tuple[ChatRequest, list[int]]] = []
        for request in requests:
            try:
                ready.append((request, self.prompt_ids(request)))
            except Exception as exc:  # one bad request must not sink its batch
                results[request.id] = ChatResult(request.id, error=f"{type(exc).__name__}: {exc}")
        if ready:
            limits = [r.token_limit(params) for r, _ in ready]
            try:
                texts = self.generate_ids(
                    [ids for _, ids in ready], [r.images for r, _ in ready], params, limits
                )
                for (request, _), outs in zip(ready, texts, strict=True):
                    results[request.id] = ChatResult(request.id, texts=outs)
            except Exception:
                if len(ready) == 1:
                    raise
                for (request, ids), limit in zip(ready, limits, strict=True):  # the rest survive a bad one
                    try:
                        results[request.id] = ChatResult(
                            request.id, texts=self.generate_ids([ids], [request.images], params, [limit])[0]
                        )
                    except Exception as exc:
                        results[request.id] = ChatResult(request.id, error=f"{type(exc).__name__}: {exc}")
        return [results[r.id] for r in requests]

    @torch.no_grad()
    def option_probs(self, requests: list[ChatRequest], options: Sequence[str]) -> list[dict[str, float]]:
        """Per request, the probability that the answer starts with each option's first token."""
        prompts = [self.prompt_ids(r) for r in requests]
        ids = {o: torch.tensor(self.option_token_ids(o)) for o in options}
        inputs = self.with_pixels(self.left_padded(prompts), [r.images for r in requests])
        with self.autocast():
            logits = self.model(**inputs).logits[:, -1].float()
        probs = torch.softmax(logits, dim=-1)
        return [{o: float(row[i].sum()) for o, i in ids.items()} for row in probs]

    @property
    def pad_id(self) -> int:
        return (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )

    def left_padded(self, prompts: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask with pads on the left, so every prompt ends at the last column."""
        width = max(len(p) for p in prompts)
        return {
            "input_ids": torch.tensor(
                [[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.model.device
            ),
            "attention_mask": torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device
            ),
        }

    def with_pixels(self, inputs: dict[str, torch.Tensor], images: Sequence[Sequence[Path]]) -> dict:
        """The prompts' images, in order, as the image processor's outputs the model takes, beside the ids."""
        files = [p for group in images for p in group]
        if files:
            processed = self.image_processor(
                images=[Image.open(p).convert("RGB") for p in files], return_tensors="pt"
            )
            for name in self.image_inputs:
                value = processed[name].to(self.model.device)
                inputs[name] = value.to(self.model.dtype) if value.is_floating_point() else value
        return self.model_inputs(inputs, None) if self.model_inputs else inputs

    def option_token_ids(self, option: str) -> list[int]:
        """Every token that spells `option` then stops or goes on with a non-letter ("▁No", "▁No.",
        "No"): vocabularies merge an answer's punctuation differently, so one token id is not enough."""
        if option not in self._option_ids:
            want = option.lower()
            found = []
            for token, i in self.tokenizer.get_vocab().items():
                text = self.tokenizer.convert_tokens_to_string([token]).strip().lower()
                if text.startswith(want) and (len(text) == len(want) or not text[len(want)].isalpha()):
                    found.append(i)
            if not found:
                raise ValueError(f"no token of this vocabulary spells {option!r}")
            self._option_ids[option] = found
        return self._option_ids[option]

    @torch.no_grad()
    def generate_ids(
        self,
        prompts: Sequence[list[int]],
        images: Sequence[Sequence[Path]],
        params: GenerationParams,
        limits: Sequence[int] | None = None,
    ) -> list[list[str]]:
        inputs = self.with_pixels(self.left_padded(prompts), images)
        width = inputs["input_ids"].shape[1]
        torch.manual_seed(params.seed)
        rows = [
            limit for limit in (limits or [params.max_new_tokens] * len(prompts)) for _ in range(params.n)
        ]
        with self.autocast():
            out = self.generate_with(inputs, params, rows)
        texts = [
            self.tokenizer.decode(row[width : width + limit], skip_special_tokens=True).strip()
            for row, limit in zip(out, rows, strict=True)
        ]
        return [texts[i * params.n : (i + 1) * params.n] for i in range(len(prompts))]

    def generate_with(
        self, inputs: dict[str, torch.Tensor], params: GenerationParams, limits: Sequence[int]
    ) -> torch.Tensor:
        from transformers import StoppingCriteriaList

        sampling = params.temperature > 0
        width = inputs["input_ids"].shape[1]
        stop = StoppingCriteriaList([RowLimits(width, limits)]) if min(limits) < max(limits) else None
        return self.model.generate(
            **inputs,
            max_new_tokens=max(limits),
            stopping_criteria=stop,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            do_sample=sampling,
            temperature=params.temperature if sampling else None,
            top_p=params.top_p if sampling else None,
            num_return_sequences=params.n,
            pad_token_id=self.pad_id,
            # an answer that writes an image token would break every later encoding of it
            suppress_tokens=[self.encoder.image_token_id]
            if self.encoder.image_token_id is not None
            else None,
        )


class RowLimits:
    """Stops each row of a batch at its own number of new tokens (the batch runs to the largest)."""

    def __init__(self, prompt_width: int, limits: Sequence[int]):
        self.prompt_width, self.limits = prompt_width, torch.tensor(list(limits))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) >= self.limits.to(input_ids.device)


def generate_batch(
    model,
    processor,
    encoder: ChatEncoder,
    questions: Sequence[str],
    images: Sequence[Path | None],
    *,
    max_new_tokens: int = 32,
) -> list[str]:
    """Greedy answers to one-question prompts with a model already in memory (quick evaluations)."""
    backend = TransformersBackend.of_model(model, processor, encoder=encoder)
    groups = [[p] if p is not None else [] for p in images]
    spans = [backend.image_spans.of_files(g) if backend.image_spans else None for g in groups]
    prompts = [encode_prompt(encoder, q, spans=s) for q, s in zip(questions, spans, strict=True)]
    return [
        t[0] for t in backend.generate_ids(prompts, groups, GenerationParams(max_new_tokens=max_new_tokens))
    ]
