"""What a training step costs: frozen weights stored in the compute dtype (float32 masters for what
trains, the checkpoint's exact weights back afterwards), no host synchronisation, the LoRA fast path,
compiled decoder layers, activation checkpointing by memory, parameters counted after LoRA."""

import collections
import json
import traceback

import pytest
import torch
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlavaForConditionalGeneration, TrainerCallback

from vialign.models.encoding import encode_all
from vialign.models.loading import load_llava, save_llava
from vialign.models.precision import autocast
from vialign.records import read_samples, write_jsonl
from vialign.train import memory
from vialign.train.core import (
    compile_decoder_layers,
    labelled_token_loss,
    prepare_for_training,
    training_encoder,
)
from vialign.train.data import SFTDataset
from vialign.train.dpo import DPOSettings, train_dpo
from vialign.train.dtypes import frozen_weights_in, lower_frozen_weights
from vialign.train.lora import use_fused_lora
from vialign.train.settings import SFTSettings
from vialign.train.sft import sft_collator, train_sft


@pytest.fixture(autouse=True)
def bf16_cpu(monkeypatch):
    """bf16 is asked for explicitly here; on a CPU without native bf16 it is emulated, which is enough."""
    monkeypatch.setenv("VIALIGN_CPU_BF16", "1")


LORA = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "merge_on_save": True}
QUICK = dict(use_cpu=True, lr=1e-3, warmup_ratio=0.0, scheduler="constant", templates="none")


@pytest.fixture(scope="module")
def data(toyworld, tmp_path_factory):
    path = tmp_path_factory.mktemp("stepdata") / "train.jsonl"
    write_jsonl(list(read_samples(toyworld / "corpus.jsonl"))[:16], path)
    return path


@pytest.fixture(scope="module")
def smollm2_llava(smollm2_checkpoint, tmp_path_factory):
    """SmolLM2-135M-Instruct inside a LLaVA with a tiny vision tower (the lab's shape)."""
    from vialign.models.assemble import assemble_llava
    from vialign.models.tiny import TinyModelSettings

    out = tmp_path_factory.mktemp("smollm2-llava")
    assemble_llava(smollm2_checkpoint, TinyModelSettings(), out)
    return out


def packed_batch(model_dir, data, toyworld, settings, n=4):
    _, processor = load_llava(model_dir)
    items, _ = encode_all(training_encoder(processor, settings, "lit"), list(read_samples(data))[:n])
    return sft_collator(processor, settings)([SFTDataset(items, toyworld)[i] for i in range(n)])


def loss_and_grads(model, batch, compute):
    """The trainer's loss on one batch under autocast, and the gradients of what trains (float32)."""
    model.zero_grad()
    inputs = dict(batch)
    positions, labels = inputs.pop("trained_positions"), inputs.pop("labels")
    with autocast(compute, "cpu"):
        outputs = model(**inputs, logits_to_keep=positions)
        loss = labelled_token_loss(outputs, labels[:, 1:].index_select(1, positions))
    loss.backward()
    grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


def lora_model(model_dir, settings):
    model, _ = load_llava(model_dir)
    model, _ = prepare_for_training(model, settings)
    with torch.no_grad():  # adapters that change the output, so every trained tensor gets a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.02)
    return model.train()


# ---------------------------------------------------------------- dtypes


def gradient_error(grads, reference):
    """‖g − g_ref‖ / ‖g_ref‖ over every trained tensor together."""
    flat = torch.cat([grads[n].flatten() for n in reference])
    ref = torch.cat([g.flatten() for g in reference.values()])
    return float((flat - ref).norm() / ref.norm())


@pytest.mark.parametrize("kind", ["tiny", "smollm2"])
def test_frozen_weights_in_bf16_train_within_the_error_of_bf16_autocast_and_come_back_exact(
    kind, tiny_model_dir, smollm2_llava, data, toyworld
):
    model_dir = tiny_model_dir if kind == "tiny" else smollm2_llava
    settings = SFTSettings(**QUICK, dtype="bfloat16", lora=LORA)
    batch = packed_batch(model_dir, data, toyworld, settings)
    model = lora_model(model_dir, settings)
    loss_32, grads_32 = loss_and_grads(model, batch, "float32")
    loss_autocast, grads_autocast = loss_and_grads(model, batch, "bfloat16")  # the path before

    adapters = [m for m in model.modules() if isinstance(m, LoraLinear)]
    with frozen_weights_in(model, settings):
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
        assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
        assert not any(m.cast_input_dtype_enabled for m in adapters), "no float32 copy of adapter inputs"
        loss_lowered, grads_lowered = loss_and_grads(model, batch, "bfloat16")
    assert loss_lowered == pytest.approx(loss_32, rel=5e-3)
    assert gradient_error(grads_lowered, grads_32) < 2 * gradient_error(grads_autocast, grads_32) + 1e-3
    assert all(m.cast_input_dtype_enabled for m in adapters), (
        "PEFT's casts back for forwards outside autocast"
    )
    original = LlavaForConditionalGeneration.from_pretrained(model_dir).state_dict()
    frozen = {n: p for n, p in model.get_base_model().named_parameters() if not p.requires_grad}
    for name, param in frozen.items():
        key = name.replace(".base_layer", "").replace(".original_module", "")
        assert param.dtype == original[key].dtype and torch.equal(param, original[key]), name
    assert loss_and_grads(model, batch, "bfloat16")[0] == loss_autocast, "the same weights, the same loss"


@pytest.mark.parametrize("lora", [True, False])
def test_a_float16_checkpoint_trained_in_bf16_saves_float16_weights_with_its_frozen_tower_intact(
    lora, tiny_model_dir, data, toyworld, tmp_path
):
    model, processor = load_llava(tiny_model_dir, dtype=torch.float16)
    save_llava(model, processor, tmp_path / "fp16")
    # a checkpoint saved mid-run rewrites the in-memory config's dtype from the (bf16) tower's
    parts = {"lora": LORA} if lora else {"save_steps": 1}
    settings = SFTSettings(**QUICK, dtype="bfloat16", max_steps=2, batch_size=4, **parts)
    train_sft(tmp_path / "fp16", data, tmp_path / "out", settings, image_root=toyworld)
    before, after = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "fp16", tmp_path / "out"))
    assert before.keys() == after.keys()
    assert {t.dtype for t in after.values()} == {torch.float16}
    tower = [k for k in before if k.startswith("vision_tower.")]
    assert tower and all(torch.equal(before[k], after[k]) for k in tower)
    assert not all(torch.equal(before[k], after[k]) for k in before), "training changed the LLM"


# ---------------------------------------------------------------- host synchronisation

SYNC_OPS = {"aten._local_scalar_dense.default", "aten.nonzero.default", "aten.is_nonzero.default"}


class SyncOrigins(TorchDispatchMode):
    """The innermost vialign/transformers/peft frame of every op that makes the host wait for a GPU."""

    def __init__(self):
        super().__init__()
        self.origins = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        stack = traceback.extract_stack() if str(func) in SYNC_OPS else []
        # the data loader's work (collators) is on host tensors, before the batch moves to the device
        if stack and not any("torch/utils/data/" in f.filename for f in stack):
            frames = [f for f in stack if "/torch/" not in f.filename and f.filename != __file__]
            self.origins[f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].name}"] += 1
        return func(*args, **(kwargs or {}))


class WatchSteps(TrainerCallback):
    """Records the sync origins of steps 2 and 3 (no logging step among them)."""

    def __init__(self):
        self.mode = SyncOrigins()

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.mode.__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            self.mode.__exit__(None, None, None)


# Inside transformers' model forward: LLaVA's check that image tokens and features agree (and the
# formatting of its message), and the attention mask's construction (packed sequences found from
# position ids; a padding mask checked for any padding). None is vialign's or the Trainer loop's.
LIBRARY_SYNCS = (
    "transformers/utils/import_utils.py:torch_compilable_check",
    "transformers/models/llava/modeling_llava.py:get_placeholder_mask",
    "transformers/masking_utils.py:",
)


def test_no_training_step_waits_for_the_device_outside_the_model_forward(
    tiny_model_dir, data, pairs_file, toyworld, tmp_path
):
    steps = dict(QUICK, max_steps=4, logging_steps=50, batch_size=4, dtype="float32", lora=LORA)
    sft, dpo = WatchSteps(), WatchSteps()
    train_sft(
        tiny_model_dir, data, tmp_path / "sft", SFTSettings(**steps), image_root=toyworld, callbacks=[sft]
    )
    dpo_steps = {k: v for k, v in steps.items() if k != "templates"}
    train_dpo(
        tiny_model_dir, pairs_file, tmp_path / "dpo", DPOSettings(**dpo_steps), toyworld, callbacks=[dpo]
    )
    for watched in (sft, dpo):
        assert watched.mode.origins, "the watch saw the steps"
        outside = {o: n for o, n in watched.mode.origins.items() if not o.startswith(LIBRARY_SYNCS)}
        assert not outside, outside


# ---------------------------------------------------------------- LoRA fast path and compile


def test_the_fused_lora_forward_computes_what_peft_does(tiny_model_dir, data, toyworld):
    settings = SFTSettings(**QUICK, dtype="float32", lora=LORA)
    batch = packed_batch(tiny_model_dir, data, toyworld, settings)
    model = lora_model(tiny_model_dir, settings)
    adapted = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert adapted and all("forward" in vars(m) for m in adapted), "every adapted layer takes the fast path"
    fused_loss, fused_grads = loss_and_grads(model, batch, "float32")
    for m in adapted:
        del m.forward  # PEFT's own
    peft_loss, peft_grads = loss_and_grads(model, batch, "float32")
    assert fused_loss == pytest.approx(peft_loss, abs=1e-6)
    for name, grad in peft_grads.items():
        assert torch.allclose(fused_grads[name], grad, atol=1e-6, rtol=1e-4), name
    with_dropout = SFTSettings(**QUICK, dtype="float32", lora={**LORA, "dropout": 0.05})
    model, _ = prepare_for_training(load_llava(tiny_model_dir)[0], with_dropout)
    assert use_fused_lora(model) == 0, "dropout keeps PEFT's forward"


def test_compiled_decoder_layers_train_as_the_plain_ones(tiny_model_dir, data, toyworld):
    torch._dynamo.reset()
    settings = SFTSettings(**QUICK, dtype="float32", lora=LORA)
    batch = packed_batch(tiny_model_dir, data, toyworld, settings)
    model = lora_model(tiny_model_dir, settings)
    plain_loss, plain_grads = loss_and_grads(model, batch, "float32")
    assert compile_decoder_layers(model, backend="eager") == model.config.text_config.num_hidden_layers
    compiled_loss, compiled_grads = loss_and_grads(model, batch, "float32")
    assert compiled_loss == pytest.approx(plain_loss, abs=1e-6)
    for name, grad in plain_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-6, rtol=1e-4), name


# ---------------------------------------------------------------- checkpointing and counts


def saved_activation_bytes(model, batch):
    """Bytes autograd keeps for the backward pass of one forward, each storage counted once."""
    storages = {}

    def keep(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    inputs = {k: v for k, v in batch.items() if k not in ("trained_positions", "labels")}
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), autocast("bfloat16", "cpu"):
        model(**inputs, logits_to_keep=batch["trained_positions"])
    return sum(storages.values())


def test_the_activation_estimate_is_near_what_autograd_keeps(tiny_model_dir, data, toyworld):
    settings = SFTSettings(**QUICK, dtype="bfloat16", lora=LORA)
    batch = packed_batch(tiny_model_dir, data, toyworld, settings, n=8)
    model = lora_model(tiny_model_dir, settings)
    lower_frozen_weights(model, "bfloat16")
    measured = saved_activation_bytes(model, batch)
    tokens = batch["input_ids"].numel()
    estimate = memory.activation_bytes(model, tokens, checkpointing=False)
    assert 0.8 * measured < estimate < 1.5 * measured, (estimate, measured)
    assert memory.activation_bytes(model, tokens, checkpointing=True) < estimate / 1.5


def test_the_largest_batch_counts_pads_unless_packed_and_the_residual_stream_is_the_llms(tiny_model_dir):
    assert memory.largest_batch_tokens([5, 100, 20, 30], 2, packed=True) == 130
    assert memory.largest_batch_tokens([5, 100, 20, 30], 2, packed=False) == 200
    full = SFTSettings(**QUICK, dtype="bfloat16")  # the LLM trains whole: float32 embeddings
    model, _ = prepare_for_training(load_llava(tiny_model_dir)[0], full)
    lower_frozen_weights(model, "bfloat16")  # the vision tower, its embeddings included, in bf16
    assert model.model.vision_tower.get_input_embeddings().weight.dtype == torch.bfloat16
    assert memory.residual_bytes(model) == 4


@pytest.mark.parametrize("free_gib", [0.001, 64.0])
def test_checkpointing_auto_turns_on_only_when_the_largest_batch_would_not_fit(
    free_gib, tiny_model_dir, data, toyworld, tmp_path, monkeypatch
):
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(free_gib * 2**30))
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["on"] = model.get_base_model().is_activation_checkpointing

    settings = SFTSettings(**QUICK, max_steps=1, batch_size=4, dtype="float32", lora=LORA)
    assert settings.gradient_checkpointing == "auto"
    manifest = train_sft(
        tiny_model_dir, data, tmp_path / "o", settings, image_root=toyworld, callbacks=[Look()]
    )
    decision = manifest.counts["activation_checkpointing"]
    assert decision["on"] is seen["on"] is (free_gib < 1)
    assert decision["setting"] == "auto" and decision["reason"].startswith(
        f"auto: {'on' if free_gib < 1 else 'off'}"
    )


def test_trainable_parameters_are_counted_after_lora(tiny_model_dir):
    settings = SFTSettings(**QUICK, lora=LORA)
    model, counts = prepare_for_training(load_llava(tiny_model_dir)[0], settings)
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert counts["vision"] == 0
    assert counts["vision"] + counts["projector"] + counts["llm"] == sum(trained.values())
    assert counts["lora_adapters"] == sum(v for n, v in trained.items() if "lora_" in n) == counts["llm"]
    assert counts["projector"] == sum(v for n, v in trained.items() if "multi_modal_projector" in n) > 0


def test_dpo_policy_starts_as_its_reference_in_bf16(tiny_model_dir, pairs_file, toyworld, tmp_path):
    settings = DPOSettings(
        use_cpu=True,
        dtype="bfloat16",
        max_steps=1,
        batch_size=1,
        ref_batch_size=1,
        logging_steps=1,
        lora=LORA,
    )
    train_dpo(tiny_model_dir, pairs_file, tmp_path / "dpo", settings, toyworld, show_progress=False)
    first = json.loads((tmp_path / "dpo" / "log_history.json").read_text())[0]
    assert first["rewards/margin"] == 0.0, "the reference log-probs come from the same weights and dtypes"
