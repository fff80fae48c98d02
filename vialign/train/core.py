"""The trainer every vialign trainer runs (SFT, DPO, reward models, the inner LLM): `transformers.Trainer`
with explicit freezing by part, LoRA scoped to the language model, a projector learning rate, shuffled
length grouping, sealed checkpoints and resume, merged export."""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import extract_model_from_parallel
from transformers import PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from vialign.models.encoding import IGNORE_INDEX, ChatEncoder, EncodeReport, EncoderSettings
from vialign.models.families import family_of
from vialign.models.families.base import ImageSpansOf
from vialign.models.loading import processor_image_tokens, save_llava, save_processor
from vialign.progress import ProgressLines, on_terminal
from vialign.records import JsonlWriter
from vialign.train.checkpoints import SealCheckpoint, resume_target, whole_run_loss
from vialign.train.data import trained_positions_of
from vialign.train.dtypes import (
    checkpoint_name,
    first_pretrained,
    frozen_weights_in,
    holds_its_own_dtypes,
    keep_float32_masters,
)
from vialign.train.lora import use_fused_lora
from vialign.train.memory import CheckpointingDecision, decide_checkpointing
from vialign.train.sampling import ShuffledLengthGroupedSampler
from vialign.train.settings import (
    LM_LORA_TARGET,
    ChatTrainerSettings,
    PartsSettings,
    TrainerSettings,
    training_argument_names,
)

PARTS = ("vision", "projector", "llm")


def set_trainable_parts(model: PreTrainedModel, settings: PartsSettings) -> None:
    family = family_of(model)
    for name, param in model.named_parameters():
        param.requires_grad_(bool(settings.resolved(f"train_{family.part_of(name)}")))


def trainable_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Parameters that train, per part, counted after LoRA froze the base; `lora_adapters` counts the
    adapters (inside `llm`)."""
    family = family_of(model)
    counts = dict.fromkeys([*PARTS, "lora_adapters"], 0)
    for name, param in model.named_parameters():
        if param.requires_grad:
            counts[family.part_of(checkpoint_name(name))] += param.numel()
            counts["lora_adapters"] += param.numel() if ".lora_" in name else 0
    return counts


def add_lora(model: PreTrainedModel, settings: PartsSettings) -> PreTrainedModel:
    from peft import LoraConfig, get_peft_model

    lora, family = settings.lora, family_of(model)
    target = lora.target_modules
    if target == LM_LORA_TARGET:  # the default: the language model, by the family's name for it
        target = target.replace("language_model", family.language_model)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target,
        modules_to_save=list(family.projector_modules) if settings.resolved("train_projector") else None,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    use_fused_lora(peft_model)
    leaked = [
        n
        for n, p in peft_model.named_parameters()
        if p.requires_grad and family.part_of(checkpoint_name(n)) == "vision"
    ]
    if leaked:
        raise ValueError(
            f"LoRA target {lora.target_modules!r} reaches the vision tower ({leaked[0]}); scope it to the language model"
        )
    return peft_model


def labelled_token_loss(outputs: Any, targets: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """transformers' causal-LM loss (float32 cross-entropy summed over trained tokens, divided by the
    trained tokens of the whole accumulated batch) on the logits of `trained_positions` alone, which the
    model computed instead of full-vocabulary logits at every position (image tokens, system prompt, and
    with VIT the whole instruction never need them). `targets` are the labels of those positions'
    next tokens."""
    logits = outputs.logits.float()
    targets = targets.to(logits.device)
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    return loss / (count.to(loss.device) if torch.is_tensor(count) else count)


class VialignTrainer(Trainer):
    """Trainer with length-grouped batches in shuffled order, a projector parameter group, and the
    language-model loss computed on trained positions only (subclasses with a loss of their own set
    `labelled_logits = False`)."""

    labelled_logits = True

    def __init__(
        self,
        *args: Any,
        projector_lr: float | None = None,
        group_by_length: bool = True,
        group_batches: int = 50,
        **kwargs: Any,
    ):
        if self.labelled_logits:
            kwargs.setdefault("compute_loss_func", labelled_token_loss)
        super().__init__(*args, **kwargs)
        self.projector_lr, self.group_by_length, self.group_batches = (
            projector_lr,
            group_by_length,
            group_batches,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.compute_loss_func is labelled_token_loss and "labels" in inputs:
            inputs = dict(inputs)
            positions = inputs.pop("trained_positions", None)
            if positions is None:  # a collator of the caller's that does not build them
                positions = trained_positions_of(inputs["labels"])
            targets = inputs["labels"][:, 1:].index_select(1, positions)
            inputs.update(logits_to_keep=positions, labels=targets)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.group_by_length and hasattr(dataset, "lengths"):
            return ShuffledLengthGroupedSampler(
                dataset.lengths, self.args.per_device_train_batch_size, self.args.seed, self.group_batches
            )
        return super()._get_train_sampler(train_dataset)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # transformers 5 writes checkpoints in the original (legacy) key layout but resumes by loading
        # them raw with strict=False: no key matches and training silently restarts from the initial
        # weights. from_pretrained maps the keys; strict loading makes any remaining mismatch loud.
        target = self.accelerator.unwrap_model(model or self.model)
        if not isinstance(target, PreTrainedModel) or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # float32: load_state_dict then casts each tensor to its parameter's dtype (float32 masters, frozen
        # weights in the compute dtype), so no master is rounded on the way
        saved = type(target).from_pretrained(
            resume_from_checkpoint, dtype=torch.float32, use_safetensors=True
        )
        target.load_state_dict(saved.state_dict(), strict=True)

    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.projector_lr is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        family = family_of(opt_model)
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((family.is_projector(name), name in decay), []).append(param)
        param_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decayed else 0.0,
                **({"lr": self.projector_lr} if projector else {}),
            }
            for (projector, decayed), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer


def training_arguments(
    out: Path, settings: TrainerSettings, checkpointing: bool = False
) -> TrainingArguments:
    compute = settings.compute_dtype()
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type=settings.scheduler,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        logging_steps=settings.logging_steps,
        save_strategy="steps" if settings.save_steps else "no",
        save_steps=settings.save_steps or 500,
        save_total_limit=settings.save_total_limit,
        report_to=[] if settings.report_to == "none" else [settings.report_to],
        seed=settings.seed,
        data_seed=settings.seed,
        dataloader_num_workers=settings.dataloader_workers,
        bf16=compute == "bfloat16",
        fp16=compute == "float16",
        deepspeed=str(settings.deepspeed) if settings.deepspeed else None,
        use_cpu=settings.device() == "cpu",
        remove_unused_columns=False,
        logging_first_step=True,
        disable_tqdm=not on_terminal(),
        # its check of every step's loss for NaN waits for the device each step; a NaN loss shows as NaN
        logging_nan_inf_filter=False,
        **{checkpointing_field(): checkpointing},
        **settings.training_args,
    )


def checkpointing_field() -> str:
    """transformers 5.2x renamed `gradient_checkpointing` (and warns on every run that sets the old name)."""
    new = "activation_checkpointing"
    return new if new in training_argument_names() else "gradient_checkpointing"


@dataclass
class TrainResult:
    world_size: int
    steps: int
    train_loss: float
    tokens_per_s: float
    seconds: float
    log_history: list[dict]
    steady_tokens_per_s: float | None = None
    peak_gpu_mb: float | None = None
    checkpointing: CheckpointingDecision | None = None

    def manifest_counts(self) -> dict[str, Any]:
        """Steps, loss, throughput (also after the first step), peak GPU memory where known, and the
        checkpointing decision, for a training stage's manifest."""
        speed = {"steady_tokens_per_s": self.steady_tokens_per_s, "peak_gpu_mb": self.peak_gpu_mb}
        return {
            "steps": self.steps,
            "train_loss": self.train_loss,
            "tokens_per_s": round(self.tokens_per_s, 1),
            "train_seconds": round(self.seconds, 2),
            **{k: round(v, 1) for k, v in speed.items() if v is not None},
            "world_size": self.world_size,
            **({"activation_checkpointing": asdict(self.checkpointing)} if self.checkpointing else {}),
        }


class ProgressLinesCallback(TrainerCallback):
    """Training progress in a log: one line per interval with the step, rate and ETA (tqdm's bar is off
    there; transformers prints each logging step's loss as a line)."""

    def __init__(self) -> None:
        self.lines = ProgressLines()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_local_process_zero:
            self.lines("train steps", state.global_step, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_local_process_zero:
            self.lines("train steps", 1, state.max_steps)


class StepClock(TrainerCallback):
    """Wall time at the end of every optimizer step, so throughput can leave out the first step (CUDA
    and DeepSpeed start-up, kernel selection, first allocations)."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())

    def steady_rate(self, tokens: float) -> float | None:
        if len(self.ends) < 2:
            return None
        later_steps = len(self.ends) - 1
        return tokens * later_steps / len(self.ends) / max(self.ends[-1] - self.ends[0], 1e-9)


def peak_gpu_mb() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def run_trainer(
    model: PreTrainedModel,
    dataset: Any,
    collator: Any,
    out: Path,
    settings: TrainerSettings,
    resume: str | bool | None = None,
    callbacks: list | None = None,
    trainer_cls: type[VialignTrainer] = VialignTrainer,
) -> TrainResult:
    with frozen_weights_in(model, settings):
        checkpointing = decide_checkpointing(
            settings.gradient_checkpointing,
            model,
            dataset.lengths,
            settings.batch_size,
            settings.device(),
            packed=getattr(settings, "packing", False),
        )
        if checkpointing.on:
            embedding_outputs_require_grad(model)
        args = training_arguments(out, settings, checkpointing.on)
        target = resume_target(Path(args.output_dir), resume, main_process=PartialState().is_main_process)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            projector_lr=getattr(settings, "projector_lr", None),
            group_by_length=getattr(settings, "group_by_length", False),
            group_batches=getattr(settings, "length_group_batches", 8),
            callbacks=[
                *(callbacks or []),
                SealCheckpoint(),
                clock := StepClock(),
                *([] if on_terminal() else [ProgressLinesCallback()]),
            ],
        )
        resumed_at = (
            json.loads((Path(target) / "trainer_state.json").read_text())["global_step"] if target else 0
        )
        t0 = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=target)
        seconds = time.perf_counter() - t0
    # accelerate wraps forward in autocast for mixed precision; callers evaluate the trained model after
    # this returns and must see the same numbers as a reload of the saved weights.
    extract_model_from_parallel(trainer.model, keep_fp32_wrapper=False)
    epochs = trainer.state.epoch or 0.0
    tokens = sum(dataset.lengths) * epochs
    state = trainer.state
    loss = whole_run_loss(state.log_history, resumed_at, output.training_loss, state.global_step)
    return TrainResult(
        trainer.args.world_size,
        state.global_step,
        loss,
        tokens / max(seconds, 1e-9),
        seconds,
        state.log_history,
        clock.steady_rate(tokens),
        peak_gpu_mb(),
        checkpointing,
    )


def embedding_outputs_require_grad(model: torch.nn.Module) -> None:
    """Checkpointed layers need an input that requires grad, which frozen embeddings (LoRA) do not give."""
    first_pretrained(model).enable_input_require_grads()


def training_encoder(
    processor: Any,
    settings: ChatTrainerSettings,
    mode: str,
    templates: dict[str, Any] | None = None,
    image_root: str | Path | None = None,
) -> ChatEncoder:
    """The encoder a training run uses: its chat format, label mode, length limit and template list, and
    its family's image token counts (read from the images under `image_root` where they vary)."""
    family = family_of(processor)
    fixed = family.fixed_image_tokens
    return ChatEncoder(
        processor.tokenizer,
        EncoderSettings(
            **family.encoder_fields(),
            chat_format=settings.chat_format or family.chat_format(settings.resolved("chat_format")),
            mode=mode,
            image_tokens=processor_image_tokens(processor) if fixed else 0,
            max_length=settings.max_length,
            image_first=settings.image_first,
            templates=frozenset(templates["sentences"]) if templates else frozenset(),
        ),
        None if fixed else ImageSpansOf(family, processor, image_root),
    )


def prepare_for_training(
    model: PreTrainedModel, settings: PartsSettings
) -> tuple[PreTrainedModel, dict[str, int]]:
    """Freeze by part, add LoRA if asked, set the dtypes of what trains, compile if asked; returns the
    model to train and the trainable parameters per part."""
    set_trainable_parts(model, settings)
    if settings.lora.enabled:
        model = add_lora(model, settings)
    keep_float32_masters(model, settings.compute_dtype())
    if settings.compile:
        compile_decoder_layers(model)
    return model, trainable_parameters(model)


def compile_decoder_layers(model: torch.nn.Module, backend: str = "inductor") -> int:
    """`torch.compile` each decoder layer of the language model in place (the layers its class lists as
    never to be split across devices); returns how many. Shapes vary with every packed batch: dynamic."""
    name_of_lm = family_of(model).language_model
    language_model = next(m for name, m in model.named_modules() if name.endswith(name_of_lm))
    layer_classes = set(getattr(language_model, "_no_split_modules", None) or ())
    layers = [m for m in language_model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(f"compile: {type(language_model).__name__} names no decoder layer class")
    for layer in layers:
        layer.compile(backend=backend, dynamic=True)
    return len(layers)


def save_run(
    model: PreTrainedModel, processor: Any, out: Path, settings: PartsSettings, result: TrainResult
) -> None:
    """Every rank calls this (ZeRO-3 gathers its shards collectively); the main process writes."""
    with full_parameters(model):
        if PartialState().is_main_process:
            export_trained(model, processor, out, settings)
            (out / "log_history.json").write_text(json.dumps(result.log_history, indent=1))


def full_parameters(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Under ZeRO-3 each rank holds a shard of every parameter (the rest are empty tensors); saving
    needs them whole."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)


def write_quarantine(out: Path, report: EncodeReport) -> None:
    with JsonlWriter(out / "quarantine.jsonl") as writer:
        for sample_id, reason in report.quarantined.items():
            writer.write({"id": sample_id, "reason": reason})


def export_trained(model: PreTrainedModel, processor: Any, out: Path, settings: PartsSettings) -> None:
    """Plain transformers checkpoint in `out`; with LoRA also the adapter in `out/adapter`."""
    if settings.lora.enabled:
        model.save_pretrained(out / "adapter")
        if not settings.lora.merge_on_save:
            save_processor(processor, out / "adapter")
            return
        model = model.merge_and_unload()
    # DeepSpeed and FSDP hold the model in their own dtype, and gathered shards are not to be recast
    if not holds_its_own_dtypes(settings):
        cast_to_checkpoint_dtype(model)
    save_llava(model, processor, out)


def checkpoint_dtype(model: PreTrainedModel) -> torch.dtype | None:
    """The dtype the model's checkpoint folder holds (its config.json, not the in-memory config, which
    every intermediate save rewrites from the first parameter's dtype); None for a model built here."""
    path = Path(model.name_or_path) / "config.json" if model.name_or_path else None
    if path is None or not path.is_file():
        return None
    config = json.loads(path.read_text())
    value = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return getattr(torch, value, None) if isinstance(value, str) else None


def cast_to_checkpoint_dtype(model: PreTrainedModel) -> None:
    """Parameters in the dtype of the checkpoint training started from (float32 masters of a float16
    checkpoint are saved as float16, as the checkpoint was); buffers (rotary frequencies) stay as they are."""
    dtype = checkpoint_dtype(model)
    if dtype is None:
        return
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
