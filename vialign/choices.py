"""The closed sets of values settings and command options take, in one light module: the settings models
and the CLI both type their fields with these, so a choice cannot differ between them."""

from typing import Literal

ImageCheck = Literal["none", "exists", "verify", "decode"]
OnDuplicate = Literal["rename", "reject", "keep-first"]
LabelMode = Literal["response", "lit", "all"]
ChatFormatName = Literal["vicuna_v1", "plain", "tokenizer"]
Family = Literal["toy", "llava-1.5", "smollm2", "llava-next", "qwen2-vl", "smolvlm"]
Vision = Literal["clip", "siglip"]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]
ComputeDtype = Literal["bfloat16", "float16", "float32"]
Stage = Literal["pretrain", "finetune", "full"]
BackendName = Literal["transformers", "vllm", "openai"]
Engine = Literal["local", "ray"]
GroupKind = Literal["questions", "answers"]
JudgeName = Literal["model", "model-yesno", "toyworld-oracle"]
PopeParser = Literal["first_sentence", "exact"]
BenchName = Literal["pope", "caption", "vqa", "mc", "text", "judge", "ifeval", "drift", "facts"]
