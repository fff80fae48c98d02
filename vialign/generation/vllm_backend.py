"""vLLM's offline `LLM` engine as a backend (the `vllm` extra, for GPU users).

Messages go to `LLM.chat` in the OpenAI format (images as data URLs), so the checkpoint's own chat
template renders them. A batch that fails is retried one request at a time so that one bad request
only fails itself. Not exercised by the CPU test suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vialign.generation.base import ChatRequest, ChatResult, GenerationParams
from vialign.generation.openai_backend import openai_messages
from vialign.models.loading import model_fingerprint


class VLLMBackend:
    name = "vllm"

    def __init__(self, llm: Any, path: str):
        self.llm, self.path = llm, path

    @classmethod
    def load(cls, path: str | Path, *, trust_remote_code: bool = False, **engine_options: Any) -> VLLMBackend:
        from vllm import LLM

        options = {k: v for k, v in engine_options.items() if v is not None and k != "chat_format"}
        return cls(LLM(model=str(path), trust_remote_code=trust_remote_code, **options), str(path))

    def identity(self) -> dict[str, Any]:
        fingerprint = model_fingerprint(self.path) if Path(self.path).is_dir() else "hub:" + self.path
        return {"backend": self.name, "model": self.path, "fingerprint": fingerprint}

    def sampling(self, params: GenerationParams, max_tokens: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=max_tokens or params.max_new_tokens,
            seed=params.seed,
            repetition_penalty=params.repetition_penalty,
        )

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[ChatResult]:
        sampling = [self.sampling(params, r.token_limit(params)) for r in requests]
        try:
            outputs = self.llm.chat([openai_messages(r) for r in requests], sampling, use_tqdm=False)
            return [
                ChatResult(r.id, texts=[c.text for c in o.outputs])
                for r, o in zip(requests, outputs, strict=True)
            ]
        except Exception:
            if len(requests) == 1:
                raise
        results = []
        for request in requests:
            try:
                (output,) = self.llm.chat(
                    [openai_messages(request)],
                    self.sampling(params, request.token_limit(params)),
                    use_tqdm=False,
                )
                results.append(ChatResult(request.id, texts=[c.text for c in output.outputs]))
            except Exception as exc:  # this request only
                results.append(ChatResult(request.id, error=f"{type(exc).__name__}: {exc}"))
        return results
