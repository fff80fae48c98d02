"""Training settings. Stage presets decide what trains; explicit settings override the preset, and
combinations that cannot work are refused here, before any model is loaded, with the reason."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from vialign.choices import ChatFormatName, Stage
from vialign.config import Settings
from vialign.data.templates import DEFAULT_TEMPLATE_MIN_FRAC
from vialign.models.encoding import CHAT_FORMATS, LabelMode
from vialign.models.precision import ComputeDtype, Dtype, resolve_dtype, training_device
from vialign.models.tiny import TinyModelSettings

# What each stage trains (vision tower, projector, language model) and how it renders turns.
STAGE_PRESETS: dict[str, dict] = {
    "pretrain": {
        "train_vision": False,
        "train_projector": True,
        "train_llm": False,
        "chat_format": "plain",
        "mode": "response",
    },
    "finetune": {
        "train_vision": False,
        "train_projector": True,
        "train_llm": True,
        "chat_format": "vicuna_v1",
        "mode": "lit",
    },
    "full": {
        "train_vision": True,
        "train_projector": True,
        "train_llm": True,
        "chat_format": "vicuna_v1",
        "mode": "lit",
    },
}
LM_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class LoraSettings(Settings):
    enabled: bool = False
    r: int = Field(128, ge=1)
    alpha: int = Field(256, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str = Field(
        LM_LORA_TARGET, description="regex over module names; default: language model only"
    )
    merge_on_save: bool = Field(True, description="also write a merged plain transformers checkpoint")


# TrainingArguments fields that vialign sets from its own settings (named as vialign names them).
NAMED_ARGS = {
    "output_dir": "out",
    "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_ratio",
    "lr_scheduler_type": "scheduler",
    "num_train_epochs": "epochs",
    "max_steps": "max_steps",
    "logging_steps": "logging_steps",
    "save_strategy": "save_steps",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "report_to": "report_to",
    "seed": "seed",
    "data_seed": "seed",
    "dataloader_num_workers": "dataloader_workers",
    "bf16": "dtype",
    "fp16": "dtype",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "deepspeed": "deepspeed",
    "use_cpu": "use_cpu",
    "remove_unused_columns": None,
    "disable_tqdm": None,
    "logging_first_step": None,
    "logging_nan_inf_filter": None,
}


@functools.cache
def training_argument_names() -> frozenset[str]:
    """The fields of the installed transformers' `TrainingArguments`."""
    from dataclasses import fields

    from transformers import TrainingArguments

    return frozenset(f.name for f in fields(TrainingArguments))


class TrainerSettings(Settings):
    """What every vialign trainer hands to `transformers.TrainingArguments`; anything else of
    TrainingArguments (max_grad_norm, optim, fsdp, torch_compile, …) goes through `training_args`."""

    # A field of another trainer given to this one, with the reason it would do nothing here.
    not_used: ClassVar[dict[str, str]] = {}
    trainer: ClassVar[str] = "this trainer"

    lr: float = Field(2e-5, gt=0)
    weight_decay: float = 0.0
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    scheduler: str = "cosine"
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="overrides epochs when > 0")
    batch_size: int = Field(16, ge=1, description="per device")
    grad_accum: int = Field(1, ge=1)
    seed: int = 0
    save_steps: int = Field(0, ge=0, description="0: save only at the end")
    save_total_limit: int | None = 2
    logging_steps: int = Field(10, ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    dataloader_workers: int = Field(0, ge=0)
    dtype: Dtype = Field(
        "auto",
        description="compute dtype (autocast, float32 master weights); auto: bfloat16 "
        "where the GPU or CPU does it natively, else float32",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="recompute activations in the backward pass; auto: only when the largest batch would "
        "not fit in the device's free memory (vialign/train/memory.py has the estimate)",
    )
    deepspeed: Path | None = Field(None, description="DeepSpeed JSON config (GPU)")
    use_cpu: bool = Field(
        False,
        description="train on the CPU even where a CUDA GPU is (without a CUDA GPU training is on the CPU anyway)",
    )
    training_args: dict[str, Any] = Field(
        default_factory=dict, description="any other transformers.TrainingArguments field, passed as given"
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_what_this_trainer_ignores(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "bf16" in data:
                raise ValueError("bf16 is now dtype: write dtype: bfloat16 (or auto, the default)")
            for name in data:
                if name in cls.not_used:
                    raise ValueError(f"{name!r} is not a setting of {cls.trainer}: {cls.not_used[name]}")
        return data

    @field_validator("training_args")
    @classmethod
    def _known_training_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = training_argument_names()
        for name in value:
            if name in NAMED_ARGS:
                ours = NAMED_ARGS[name]
                raise ValueError(
                    f"training_args.{name} is set by vialign" + (f" from {ours!r}; set that" if ours else "")
                )
            if name not in known:
                raise ValueError(f"training_args.{name}: transformers.TrainingArguments has no such field")
        return value

    @model_validator(mode="after")
    def _deepspeed_needs_a_gpu(self) -> TrainerSettings:
        if self.deepspeed is not None and self.use_cpu:
            raise ValueError(
                "DeepSpeed configs here are for GPU training; drop use_cpu or the deepspeed config"
            )
        return self

    def device(self) -> str:
        """Where training runs, decided at run time (not at validation: a GPU recipe is checked on a laptop
        too)."""
        return training_device(self.use_cpu)

    def compute_dtype(self) -> ComputeDtype:
        return resolve_dtype(self.dtype, self.device())


class PartsSettings(TrainerSettings):
    """Trainers of a LLaVA: what trains (stage presets, explicit parts, LoRA) and the projector's LR."""

    stage: Stage = "finetune"
    train_vision: bool | None = None
    train_projector: bool | None = None
    train_llm: bool | None = None
    projector_lr: float | None = Field(None, gt=0, description="default: same as lr")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    compile: bool = Field(
        False,
        description="torch.compile each decoder layer of the language model; pays for its compile time "
        "on long runs only (BENCHMARKS.md `compile cpu`)",
    )

    def resolved(self, name: str):
        value = getattr(self, name)
        return STAGE_PRESETS[self.stage][name] if value is None else value

    @model_validator(mode="after")
    def _refuse_parts_that_cannot_train(self) -> PartsSettings:
        train = {part: self.resolved(f"train_{part}") for part in ("vision", "projector", "llm")}
        if not any(train.values()):
            raise ValueError("nothing would train: vision, projector and language model are all frozen")
        if self.projector_lr is not None and not train["projector"]:
            raise ValueError("projector_lr is set but the projector is frozen (train_projector false)")
        if self.lora.enabled and not train["llm"]:
            raise ValueError(
                "LoRA adapts the language model, which this stage freezes; set train_llm true or disable LoRA"
            )
        if self.lora.enabled and train["vision"]:
            raise ValueError(
                "LoRA with train_vision: the vision tower would be fully trained beside adapters; "
                "use stage 'full' without LoRA, or freeze the vision tower"
            )
        return self


class ChatTrainerSettings(PartsSettings):
    """Trainers whose samples the chat encoder lays out (SFT, DPO)."""

    chat_format: ChatFormatName | None = None
    max_length: int = Field(2048, ge=8)
    image_first: bool = Field(
        True,
        description="put each turn's <image> tags first, each followed by a newline, as LLaVA-1.5 "
        "trains and every inference prompt asks; false: train records as written",
    )

    @model_validator(mode="after")
    def _known_chat_format(self) -> ChatTrainerSettings:
        if self.resolved("chat_format") not in CHAT_FORMATS:
            raise ValueError(
                f"unknown chat_format {self.resolved('chat_format')!r}; known: {sorted(CHAT_FORMATS)}"
            )
        return self


class SFTSettings(ChatTrainerSettings):
    trainer: ClassVar[str] = "`train sft`"

    mode: LabelMode | None = None
    templates: Path | Literal["none"] | None = Field(
        None,
        description="template list from `vialign data templates`; default: detected over the training "
        "data at template_min_frac (mode lit); 'none': no template is excluded",
    )
    template_min_frac: float = Field(
        DEFAULT_TEMPLATE_MIN_FRAC,
        gt=0,
        le=1,
        description="share of samples above which a user sentence is a template",
    )
    # Off by default: on the toy world, length-homogeneous batches (even 4 batches per sorted group) kept
    # a tiny LLaVA from learning to read images at all (vialign/train/sampling.py has the numbers).
    group_by_length: bool = False
    length_group_batches: int = Field(
        8, ge=1, description="batches per length-sorted group; fewer mixes lengths more"
    )
    packing: bool = Field(
        True,
        description="pack each batch's samples into rows (no padding; attention and "
        "labels never cross a sample); loss equals the padded batch's",
    )
    encode_workers: int | None = Field(
        None, ge=1, description="processes building the encoded-data cache; default one per core, at most 8"
    )
    pack_tokens: int | None = Field(
        None,
        ge=8,
        description="tokens per packed row; default: four times the batch's "
        "longest sample, at most max_length (with flash-attention, set it high)",
    )

    @model_validator(mode="after")
    def _refuse_labels_that_cannot_work(self) -> SFTSettings:
        fmt, mode = self.resolved("chat_format"), self.resolved("mode")
        if fmt == "plain" and mode == "lit":
            raise ValueError(
                "mode 'lit' needs the question text, which the 'plain' format drops; use mode 'response'"
            )
        return self


class LMTrainSettings(TrainerSettings):
    """`train lm`: the tiny inner LLM, trained whole on the toy world's text (no image, no parts)."""

    trainer: ClassVar[str] = "`train lm`"
    not_used: ClassVar[dict[str, str]] = {
        **dict.fromkeys(
            ("stage", "train_vision", "train_projector", "train_llm", "projector_lr"),
            "the inner LLM has no vision tower or projector; it always trains whole",
        ),
        "lora": "the inner LLM is trained from scratch, whole",
        "chat_format": "the inner LLM learns the vicuna_v1 layout its LLaVA uses",
        **dict.fromkeys(("templates", "template_min_frac"), "its text corpus has no templates"),
        **dict.fromkeys(("packing", "pack_tokens"), "its text samples are padded per batch"),
    }

    mode: LabelMode = Field("response", description="response: the answers of its text corpus only")
    # On: text-only samples have no image to learn to read (what made SFT keep it off), and random batches
    # of the toy world's text are 57% padding.
    group_by_length: bool = True
    length_group_batches: int = Field(
        8, ge=1, description="batches per length-sorted group; fewer mixes lengths more"
    )
    max_length: int = Field(2048, ge=8)
    model: TinyModelSettings = Field(default_factory=TinyModelSettings, description="the inner LLM's shape")
