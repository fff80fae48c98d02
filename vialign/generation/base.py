"""One interface for every generation backend: a batch of chat requests, each with optional images,
in; one result per request out, carrying either texts or that request's own error.

Backends are found by exact name in `BACKENDS` (import paths, imported only when used).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field

from vialign.choices import BackendName, ChatFormatName
from vialign.config import Settings
from vialign.models.precision import Dtype


class GenerationParams(Settings):
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="samples per request")
    seed: int = 0
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="above 1 discourages repeating tokens (transformers, vLLM; 1: off)"
    )


@dataclass
class ChatRequest:
    id: str
    messages: list[dict[str, str]]  # {"role": "system"|"user"|"assistant", "content": text with <image> tags}
    images: list[Path] = field(default_factory=list)
    max_new_tokens: int | None = None  # this request's own limit, below the batch's

    def token_limit(self, params: GenerationParams) -> int:
        return min(params.max_new_tokens, self.max_new_tokens or params.max_new_tokens)


@dataclass
class ChatResult:
    id: str
    texts: list[str] | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        if self.texts is None:
            raise ValueError(f"request {self.id!r} failed: {self.error}")
        return self.texts[0]


class Backend(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """What produced the texts (backend, model, fingerprint); stored with every result."""
        ...

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[ChatResult]: ...


BACKENDS: dict[str, str] = {
    "transformers": "vialign.generation.local:TransformersBackend",
    "vllm": "vialign.generation.vllm_backend:VLLMBackend",
    "openai": "vialign.generation.openai_backend:OpenAIBackend",
}


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    module, attr = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def backend_name(target: str, backend: str | None = None) -> str:
    return backend or ("openai" if target.startswith(("http://", "https://")) else "transformers")


def open_backend(target: str, backend: str | None = None, **options: Any) -> Backend:
    """`target` is a checkpoint folder (transformers, or vllm when asked) or an http(s) URL (openai)."""
    return backend_class(backend_name(target, backend)).load(target, **options)


class ModelSettings(Settings):
    """Which model answers, and how to reach it; shared by every stage that generates."""

    backend: BackendName | None = Field(None, description="default: from the target")
    chat_format: ChatFormatName = Field("vicuna_v1", description="prompt layout for local checkpoints")
    model_name: str | None = Field(None, description="model name for an OpenAI-compatible server")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    device: str | None = Field(None, description="local checkpoints: cpu, cuda, ...")
    dtype: Dtype = Field(
        "auto",
        description="local checkpoints: compute dtype; auto: bfloat16 where the GPU "
        "or CPU does it natively, else float32",
    )

    def open(self, target: str) -> Backend:
        name = backend_name(target, self.backend)
        if name == "openai":
            return open_backend(target, name, model=self.model_name, api_key_env=self.api_key_env)
        options = {"chat_format": self.chat_format, "device": self.device, "dtype": self.dtype}
        return open_backend(target, name, **{k: v for k, v in options.items() if v is not None})


class JudgeModelSettings(Settings):
    """A judge reached through a backend: which model, how it generates, how many requests per batch,
    and where its answers are cached. Stages subclass it with their prompt and defaults."""

    target: str | None = Field(None, description="judge: checkpoint folder or OpenAI-compatible URL")
    model: ModelSettings = Field(default_factory=ModelSettings)
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=256))
    batch_size: int = Field(16, ge=1)
    cache: Path | None = Field(None, description="response cache (JSONL); default: beside the output")


_SLOT = re.compile(r"\{\{|\}\}|\{(\w+)\}")


def fill_prompt(template: str, **values: str) -> str:
    """`str.format` semantics for the named slots (`{{`/`}}` are literal braces, so a JSON example in a
    prompt reads as JSON), in one pass: braces inside the values are never read as slots, and an unknown
    `{name}` stays as written."""

    def slot(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group()[0]
        return str(values[name]) if name in values else match.group()

    return _SLOT.sub(slot, template)
