"""Any OpenAI-compatible chat server (vLLM, SGLang, TGI, hosted APIs) as a backend.

Requests run concurrently under a semaphore. The `openai` SDK retries 429, 5xx, timeouts and
connection errors with exponential backoff (honouring Retry-After); a reply without usable text is
asked once more, then recorded as that request's error. The API key is read from an environment
variable and never stored in identities, logs or error messages.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import re
from pathlib import Path
from typing import Any

from vialign.generation.base import ChatRequest, ChatResult, GenerationParams
from vialign.records import IMAGE_TAG


def image_part(path: Path) -> dict[str, Any]:
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """`<image>` tags become image parts, in order, carrying the request's image files."""
    images = iter(request.images)
    out = []
    for message in request.messages:
        if IMAGE_TAG not in message["content"]:
            out.append({"role": message["role"], "content": message["content"]})
            continue
        parts: list[dict[str, Any]] = []
        for k, text in enumerate(message["content"].split(IMAGE_TAG)):
            if k:
                parts.append(image_part(next(images)))
            if text.strip():
                parts.append({"type": "text", "text": text.strip()})
        out.append({"role": message["role"], "content": parts})
    return out


def redact(text: str, secret: str | None) -> str:
    text = re.sub(r"(?i)(bearer\s+|api[_-]?key[=:\s]+)\S+", r"\1[redacted]", text)
    return text.replace(secret, "[redacted]") if secret else text


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        malformed_retries: int = 1,
    ):
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.concurrency, self.timeout_s, self.max_retries, self.malformed_retries = (
            concurrency,
            timeout_s,
            max_retries,
            malformed_retries,
        )
        # One event loop and one client for the backend's life: connections stay open between batches.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = None

    @classmethod
    def load(cls, target: str, **options: Any) -> OpenAIBackend:
        return cls(target, **{k: v for k, v in options.items() if v is not None and k != "chat_format"})

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def identity(self) -> dict[str, Any]:
        return {"backend": self.name, "base_url": self.base_url, "model": self.model}

    def client(self):
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env) or "EMPTY"  # local servers accept any key
        return AsyncOpenAI(
            base_url=self.base_url, api_key=key, timeout=self.timeout_s, max_retries=self.max_retries
        )

    def generate(self, requests: list[ChatRequest], params: GenerationParams) -> list[ChatResult]:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self.generate_async(requests, params))

    async def generate_async(self, requests: list[ChatRequest], params: GenerationParams) -> list[ChatResult]:
        if self._client is None:
            self._client = self.client()
        limit = asyncio.Semaphore(self.concurrency)
        return list(await asyncio.gather(*(self.one(self._client, limit, r, params) for r in requests)))

    def close(self) -> None:
        if self._loop is not None:
            if self._client is not None:
                self._loop.run_until_complete(self._client.close())
            self._loop.close()
            self._loop = self._client = None

    async def one(
        self, client, limit: asyncio.Semaphore, request: ChatRequest, params: GenerationParams
    ) -> ChatResult:
        secret = os.environ.get(self.api_key_env)
        async with limit:
            for attempt in range(self.malformed_retries + 1):
                try:
                    response = await client.chat.completions.create(
                        model=self.model or "default",
                        messages=openai_messages(request),
                        max_tokens=request.token_limit(params),
                        temperature=params.temperature,
                        top_p=params.top_p,
                        n=params.n,
                        seed=params.seed,
                        # vLLM's and TGI's OpenAI servers read it; OpenAI's own API has no such field
                        **(
                            {"extra_body": {"repetition_penalty": params.repetition_penalty}}
                            if params.repetition_penalty != 1.0
                            else {}
                        ),
                    )
                    texts = [choice.message.content for choice in response.choices]
                    if len(texts) == params.n and all(isinstance(t, str) for t in texts):
                        return ChatResult(request.id, texts=texts)
                    problem = f"malformed reply (attempt {attempt + 1}): no text in {len(texts)} choice(s)"
                except Exception as exc:  # recorded per request; the batch goes on
                    problem = redact(f"{type(exc).__name__}: {exc}", secret)
                    if not is_malformed(exc):
                        break
            return ChatResult(request.id, error=problem)


def is_malformed(exc: Exception) -> bool:
    """Errors worth one more try beyond the SDK's own retries: unparsable or invalid bodies."""
    from openai import APIResponseValidationError

    return isinstance(exc, APIResponseValidationError | ValueError | AttributeError | TypeError)
