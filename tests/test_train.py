"""SFT trainer invariants: gradient accumulation, freezing, resume, LoRA scope, merged export, refusals."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration, TrainerCallback

from vialign.models.families.llava import LLAVA
from vialign.models.loading import load_llava
from vialign.models.precision import cpu_has_native_bf16
from vialign.records import read_samples, write_jsonl
from vialign.train.core import add_lora, export_trained, set_trainable_parts
from vialign.train.settings import SFTSettings
from vialign.train.sft import train_sft

# float32: the invariants below are exact; bf16 autocast has its own test.
BASE = dict(
    use_cpu=True,
    lr=1e-3,
    warmup_ratio=0.0,
    scheduler="constant",
    logging_steps=1,
    group_by_length=False,
    dtype="float32",
)


@pytest.fixture(scope="module")
def data(toyworld, tmp_path_factory):
    path = tmp_path_factory.mktemp("sftdata") / "train.jsonl"
    write_jsonl(list(read_samples(toyworld / "corpus.jsonl"))[:48], path)
    return path


def run(tiny_model_dir, data, toyworld, out, callbacks=None, resume=None, **overrides):
    settings = SFTSettings(**{**BASE, **overrides})
    return train_sft(
        tiny_model_dir, data, out, settings, image_root=toyworld, resume=resume, callbacks=callbacks
    )


def weights(folder):
    """Parameters under their current names (checkpoints on disk use the legacy key layout)."""
    return LlavaForConditionalGeneration.from_pretrained(folder).state_dict()


def step_losses(out):
    return [row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]


def test_gradient_accumulation_equivalence(tiny_model_dir, data, toyworld, tmp_path):
    run(tiny_model_dir, data, toyworld, tmp_path / "a", batch_size=8, grad_accum=1, max_steps=3)
    run(tiny_model_dir, data, toyworld, tmp_path / "b", batch_size=1, grad_accum=8, max_steps=3)
    la, lb = step_losses(tmp_path / "a"), step_losses(tmp_path / "b")
    assert len(la) == len(lb) == 3
    assert la == pytest.approx(lb, abs=1e-5)
    wa, wb = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_finetune_freezes_vision_and_trains_every_other_parameter(tiny_model_dir, data, toyworld, tmp_path):
    before = weights(tiny_model_dir)
    manifest = run(
        tiny_model_dir, data, toyworld, tmp_path / "ft", stage="finetune", batch_size=8, max_steps=2
    )
    after = weights(tmp_path / "ft")
    assert manifest.counts["trainable_parameters"]["vision"] == 0
    templates = manifest.settings["templates"]
    assert templates["detected"] and templates["min_frac"] == 0.05, (
        "LIT excludes detected templates by default"
    )
    assert "Answer the question using a single word or phrase." in templates["sentences"]
    for name, tensor in before.items():
        if name.startswith(LLAVA.parts["vision"]):
            assert torch.equal(tensor, after[name]), f"frozen {name} changed"
        else:
            assert not torch.equal(tensor, after[name]), f"trainable {name} did not change"


def test_pretrain_stage_trains_only_the_projector(tiny_model_dir, data, toyworld, tmp_path):
    before = weights(tiny_model_dir)
    run(tiny_model_dir, data, toyworld, tmp_path / "pt", stage="pretrain", batch_size=8, max_steps=2)
    after = weights(tmp_path / "pt")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(LLAVA.parts["projector"]) for name in changed)
    assert changed == {name for name in before if name.startswith(LLAVA.parts["projector"])}


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_from_checkpoint_matches_an_uninterrupted_run(tiny_model_dir, data, toyworld, tmp_path):
    common = dict(batch_size=4, max_steps=6, save_steps=3, scheduler="cosine", warmup_ratio=0.2)
    run(tiny_model_dir, data, toyworld, tmp_path / "whole", **common)
    run(tiny_model_dir, data, toyworld, tmp_path / "cut", callbacks=[StopAt(3)], **common)
    assert (tmp_path / "cut" / "checkpoints" / "checkpoint-3").is_dir()
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-6", ignore_errors=True)
    run(tiny_model_dir, data, toyworld, tmp_path / "cut", resume=True, **common)
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "cut")
    assert all(torch.allclose(whole[k], resumed[k], atol=1e-6) for k in whole)
    assert step_losses(tmp_path / "whole")[-3:] == pytest.approx(step_losses(tmp_path / "cut")[-3:], abs=1e-6)


def test_projector_gets_its_own_learning_rate(tiny_model_dir, data, toyworld, tmp_path):
    from vialign.train.core import VialignTrainer, training_arguments
    from vialign.train.data import SFTCollator, SFTDataset

    model, _ = load_llava(tiny_model_dir)
    settings = SFTSettings(**{**BASE, "projector_lr": 7e-3, "lr": 1e-4})
    set_trainable_parts(model, settings)
    trainer = VialignTrainer(
        model=model,
        args=training_arguments(tmp_path, settings),
        train_dataset=SFTDataset([], None),
        data_collator=SFTCollator(0),
        projector_lr=settings.projector_lr,
    )
    optimizer = trainer.create_optimizer()
    assert optimizer.defaults["fused"], "the fused AdamW kernel, parameter groups or not"
    projector_ids = {id(p) for n, p in model.named_parameters() if "multi_modal_projector" in n}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= projector_ids or not ids & projector_ids, "groups mix projector and other parameters"
        assert group["lr"] == (7e-3 if ids <= projector_ids else 1e-4)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_lora_stays_out_of_the_vision_tower_and_merged_export_loads_in_plain_transformers(
    tiny_model_dir, toyworld, tmp_path
):
    model, processor = load_llava(tiny_model_dir)
    settings = SFTSettings(use_cpu=True, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0})
    set_trainable_parts(model, settings)
    peft_model = add_lora(model, settings)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and not any("vision_tower" in n for n in trainable)
    assert all("language_model" in n or "multi_modal_projector" in n for n in trainable)
    assert not any("lora" in n for n, _ in peft_model.named_modules() if "vision_tower" in n)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    sample = next(read_samples(toyworld / "corpus.jsonl"))
    from PIL import Image

    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
    )
    batch = processor(
        images=Image.open(toyworld / sample.image).convert("RGB"), text=prompt, return_tensors="pt"
    )
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).logits
    export_trained(peft_model, processor, tmp_path / "merged", settings)
    plain = LlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    assert (tmp_path / "merged" / "adapter" / "adapter_config.json").exists()
    assert not any("lora" in k for k in load_file(str(tmp_path / "merged" / "model.safetensors")))
    with torch.no_grad():
        assert torch.allclose(plain(**batch).logits, expected, atol=2e-5)


def test_lora_target_reaching_the_vision_tower_is_refused(tiny_model_dir):
    model, _ = load_llava(tiny_model_dir)
    settings = SFTSettings(
        use_cpu=True, lora={"enabled": True, "r": 2, "target_modules": r".*\.(q_proj|v_proj)"}
    )
    set_trainable_parts(model, settings)
    with pytest.raises(ValueError, match="vision tower"):
        add_lora(model, settings)


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ({"stage": "pretrain", "mode": "lit"}, "drops"),
        ({"stage": "pretrain", "lora": {"enabled": True}}, "LoRA adapts the language model"),
        ({"stage": "full", "lora": {"enabled": True}}, "LoRA with train_vision"),
        ({"train_projector": False, "projector_lr": 1e-3}, "projector is frozen"),
        ({"train_vision": False, "train_projector": False, "train_llm": False}, "nothing would train"),
        ({"bf16": True}, "bf16 is now dtype"),
        ({"dtype": "float8"}, "dtype"),
        ({"chat_format": "chatml"}, "(?s)chat_format.*'vicuna_v1', 'plain' or 'tokenizer'"),
    ],
)
def test_incompatible_settings_are_refused_with_the_reason(settings, reason):
    with pytest.raises(ValueError, match=reason):
        SFTSettings(**settings)


def test_truncated_and_quarantined_samples_are_counted(tiny_model_dir, data, toyworld, tmp_path):
    samples = list(read_samples(data))[:8]
    bad = samples[0].model_copy(
        update={
            "id": "two-tags",
            "conversations": [
                samples[0].conversations[0].model_copy(update={"value": "<image>\n<image>\nq"}),
                samples[0].conversations[1],
            ],
        }
    )
    write_jsonl([*samples, bad], tmp_path / "d.jsonl")
    manifest = run(
        tiny_model_dir,
        tmp_path / "d.jsonl",
        toyworld,
        tmp_path / "q",
        batch_size=4,
        max_steps=1,
        templates="none",
    )
    assert (manifest.counts["encoded"], manifest.counts["quarantined"]) == (8, 1)
    assert manifest.settings["templates"] == "none", "template exclusion turned off is recorded as off"
    (row,) = [json.loads(line) for line in (tmp_path / "q" / "quarantine.jsonl").read_text().splitlines()]
    assert row["id"] == "two-tags" and "<image> tags" in row["reason"]


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_ddp(tiny_model_dir, data, toyworld, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(repo / "configs/accelerate/ddp_cpu.yaml"),
        "-m",
        "vialign.cli",
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--image-root",
        str(toyworld),
        "--out",
        str(out),
        "--set",
        "max_steps=3",
        "--set",
        "batch_size=2",
        "--set",
        "lr=1e-3",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["world_size"] == 2 and manifest["counts"]["steps"] == 3
    before, after = weights(tiny_model_dir), weights(out)
    assert all(torch.equal(before[k], after[k]) == k.startswith(LLAVA.parts["vision"]) for k in before)


def test_train_lm_then_assemble_keeps_the_language_model_exact(toyworld, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vialign.models.assemble import assemble_llava
    from vialign.models.tiny import TinyModelSettings
    from vialign.train.lm import train_lm
    from vialign.train.settings import LMTrainSettings

    manifest = train_lm(
        toyworld,
        tmp_path / "lm",
        TinyModelSettings(text_layers=1),
        LMTrainSettings(
            **{**{k: v for k, v in BASE.items() if k != "group_by_length"}, "max_steps": 3, "batch_size": 4}
        ),
    )
    assert manifest.counts["steps"] == 3 and manifest.counts["encoded"] == 1000
    assemble_llava(tmp_path / "lm", TinyModelSettings(), tmp_path / "llava", vision_feature_layer=-1)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "lm")
    llava, processor = load_llava(tmp_path / "llava")
    ids = tokenizer("USER: What is 3 plus 4? ASSISTANT:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(lm(input_ids=ids).logits, llava(input_ids=ids).logits, atol=1e-6)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == llava.config.image_token_id
    assert llava.config.vision_config.model_type == "clip_vision_model"


KILLED_RUN = """
import json, os, signal, sys
from transformers import Trainer, TrainerCallback
from vialign.train.settings import SFTSettings
from vialign.train.sft import train_sft

model, data, root, out, kill, settings = sys.argv[1:7]
where, at = kill.split(":")
if where == "save":  # die inside the save of checkpoint `at`: weights and optimizer written, no trainer state
    original = Trainer._save_rng_state

    def dying(self, output_dir):
        if self.state.global_step == int(at):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, output_dir)

    Trainer._save_rng_state = dying


class DieAfterStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if where == "step" and state.global_step == int(at):
            os.kill(os.getpid(), signal.SIGKILL)


train_sft(model, data, out, SFTSettings(**json.loads(settings)), image_root=root, callbacks=[DieAfterStep()])
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill", ["save:4", "step:1"], ids=["during-a-checkpoint-save", "before-any-checkpoint"]
)
def test_sigkill_then_resume_last_equals_an_uninterrupted_run(tiny_model_dir, data, toyworld, tmp_path, kill):
    import subprocess
    import sys

    common = dict(BASE, batch_size=4, max_steps=6, save_steps=2, scheduler="cosine", warmup_ratio=0.2)
    whole = run(tiny_model_dir, data, toyworld, tmp_path / "whole", **common)
    cut = tmp_path / "cut"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    args = [str(tiny_model_dir), str(data), str(toyworld), str(cut), kill, json.dumps(common)]
    died = subprocess.run([sys.executable, "-c", KILLED_RUN, *args], env=env, timeout=600)
    assert died.returncode == -9
    checkpoints = (
        sorted(p.name for p in (cut / "checkpoints").glob("checkpoint-*")) if kill == "save:4" else []
    )
    assert checkpoints == (["checkpoint-2", "checkpoint-4"] if kill == "save:4" else [])
    resumed = run(tiny_model_dir, data, toyworld, cut, resume=True, **common)
    a, b = weights(tmp_path / "whole"), weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert resumed.counts["train_loss"] == pytest.approx(whole.counts["train_loss"], abs=1e-6)
    assert resumed.counts["steps"] == 6


def test_resume_refuses_a_named_unfinished_checkpoint(tmp_path):
    from vialign.train.checkpoints import resume_target, whole_run_loss

    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / "config.json").write_text('{"trunc')
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resume_target(tmp_path, str(tmp_path / "checkpoint-3"))
    assert resume_target(tmp_path, True) is None and not (tmp_path / "checkpoint-3").exists()
    log = [{"loss": 4.0, "step": 1}, {"loss": 2.0, "step": 3}, {"loss": 1.0, "step": 4}]
    assert whole_run_loss(log, resumed_at=3, session_loss=1.5, final_step=5) == pytest.approx(
        (4 + 2 * 2 + 1.5 * 2) / 5
    )


def test_templates_are_detected_by_default_given_or_turned_off(data, tmp_path):
    from vialign.data.templates import find_templates, write_templates
    from vialign.train.sft import training_templates

    detected = training_templates(SFTSettings(template_min_frac=0.2), "lit", data)
    expected = [r["sentence"] for r in find_templates(read_samples(data), 0.2)["templates"]]
    assert detected == {"path": None, "detected": True, "min_frac": 0.2, "sentences": expected} and expected
    assert training_templates(SFTSettings(templates="none"), "lit", data) is None
    assert training_templates(SFTSettings(), "response", data) is None
    write_templates(
        {"min_frac": 0.5, "samples": 1, "templates": [{"sentence": "Only this."}]}, tmp_path / "t.json"
    )
    given = training_templates(SFTSettings(templates=tmp_path / "t.json"), "lit", data)
    assert given["sentences"] == ["Only this."] and given["min_frac"] == 0.5 and not given["detected"]


def test_every_sample_too_long_is_a_clear_error_with_the_quarantine_written(
    tiny_model_dir, data, toyworld, tmp_path
):
    from typer.testing import CliRunner

    from vialign.cli import app

    args = [
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(data),
        "--image-root",
        str(toyworld),
        "--out",
        str(tmp_path / "o"),
        "--set",
        "max_length=8",
        "--set",
        "use_cpu=true",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "no sample of" in result.output and "max_length" in result.output
    assert isinstance(result.exception, SystemExit)
    rows = [json.loads(line) for line in (tmp_path / "o" / "quarantine.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and all("max_length" in r["reason"] for r in rows)


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_one_bf16_autocast_step_matches_float32_and_keeps_float32_master_weights(
    tiny_model_dir, data, toyworld, tmp_path
):
    before = weights(tiny_model_dir)
    runs = {
        d: run(tiny_model_dir, data, toyworld, tmp_path / d, batch_size=8, max_steps=1, dtype=d)
        for d in ("float32", "bfloat16")
    }
    assert {d: m.settings["resolved"]["dtype"] for d, m in runs.items()} == {
        "float32": "float32",
        "bfloat16": "bfloat16",
    }
    loss32, loss16 = (step_losses(tmp_path / d)[0] for d in ("float32", "bfloat16"))
    assert loss16 == pytest.approx(loss32, rel=0.02) and loss16 != loss32, "bf16 ran, and close to fp32"
    w32, w16 = weights(tmp_path / "float32"), weights(tmp_path / "bfloat16")
    assert all(w16[k].dtype == torch.float32 for k in w16), "master weights stay float32"
    trained = [k for k in before if not torch.equal(before[k], w32[k])]
    delta32 = torch.cat([(w32[k] - before[k]).flatten() for k in trained])
    delta16 = torch.cat([(w16[k] - before[k]).flatten() for k in trained])
    assert torch.nn.functional.cosine_similarity(delta32, delta16, dim=0) > 0.95


def test_auto_dtype_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    from vialign.models import precision

    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_dtype("auto", "cpu") == "float32"
    with pytest.raises(ValueError, match="emulated"):
        precision.resolve_dtype("bfloat16", "cpu")
    with pytest.raises(ValueError, match="CUDA"):
        precision.resolve_dtype("float16", "cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    slower = {"bf16_faster": False, "float32_s": 0.01, "bfloat16_s": 0.02}
    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: slower)
    auto = precision.resolve_precision("auto", "cpu")
    assert auto.dtype == "float32" and "not faster" in auto.reason, "native but measured slower: float32"
    assert precision.resolve_dtype("bfloat16", "cpu") == "bfloat16", "asked for explicitly: honoured"
    monkeypatch.setattr(precision, "cpu_bf16_probe", lambda: {**slower, "bf16_faster": True})
    assert precision.resolve_dtype("auto", "cpu") == "bfloat16"
    assert precision.resolve_precision("float32", "cpu").reason == "set explicitly"
    monkeypatch.setenv(precision.CPU_BF16_ENV, "0")
    assert precision.resolve_precision("auto", "cpu").reason.startswith("auto: VIALIGN_CPU_BF16=0")
    monkeypatch.setenv(precision.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="VIALIGN_CPU_BF16"):
        precision.resolve_dtype("auto", "cpu")


def test_the_bf16_probe_is_measured_once_per_machine(tmp_path, monkeypatch):
    from vialign.models import precision

    monkeypatch.setenv("VIALIGN_CACHE", str(tmp_path))
    precision.cpu_bf16_probe.cache_clear()
    calls = []
    monkeypatch.setattr(
        precision,
        "matmul_seconds",
        lambda dtype: calls.append(dtype) or (1.0 if dtype == torch.float32 else 0.4),
    )
    assert precision.cpu_bf16_probe()["bf16_faster"] and len(calls) == 2
    precision.cpu_bf16_probe.cache_clear()
    assert precision.cpu_bf16_probe()["bf16_faster"] and len(calls) == 2, "read back from the cache file"
    precision.cpu_bf16_probe.cache_clear()


def packed_and_padded(tiny_model_dir, data, toyworld, n=6, row_tokens=None):
    from vialign.models.encoding import encode_all
    from vialign.train.core import training_encoder
    from vialign.train.data import PackedSFTCollator, SFTCollator, SFTDataset

    model, processor = load_llava(tiny_model_dir)
    items, _ = encode_all(
        training_encoder(processor, SFTSettings(mode="lit"), "lit"), list(read_samples(data))[:n]
    )
    rows = [SFTDataset(items, toyworld)[i] for i in range(n)]
    pad = processor.tokenizer.pad_token_id
    width = row_tokens or sum(len(r["input_ids"]) for r in rows) // 2
    return (
        model,
        rows,
        SFTCollator(pad, processor.image_processor)(rows),
        PackedSFTCollator(pad, processor.image_processor, row_tokens=width)(rows),
    )


def model_inputs(batch):
    """A collated batch as the model takes it (the trainer consumes `trained_positions`)."""
    return {k: v for k, v in batch.items() if k != "trained_positions"}


def loss_and_grads(model, batch):
    model.zero_grad()
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    loss = model(**model_inputs(batch)).loss
    loss.backward()
    return (
        loss.item(),
        n_labels,
        {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
    )


def test_packed_batch_has_the_loss_and_gradients_of_the_padded_batch(tiny_model_dir, data, toyworld):
    model, rows, padded, packed = packed_and_padded(tiny_model_dir, data, toyworld)
    assert 1 < packed["input_ids"].shape[0] < len(rows), "several samples per row, more than one row"
    assert "attention_mask" not in packed
    real = sum(len(r["input_ids"]) for r in rows)
    assert packed["input_ids"].numel() - real < padded["input_ids"].numel() - real
    loss_a, labels_a, grads_a = loss_and_grads(model, padded)
    loss_b, labels_b, grads_b = loss_and_grads(model, packed)
    assert labels_a == labels_b
    assert loss_b == pytest.approx(loss_a, abs=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        assert torch.allclose(grads_a[k], grads_b[k], atol=1e-5, rtol=1e-4), k


@pytest.fixture(scope="module")
def smollm2_tiny_dir(toyworld, tmp_path_factory):
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    out = tmp_path_factory.mktemp("smollm2-tiny")
    build_tiny_model(None, out, TinyModelSettings(family="smollm2"))
    return out


@pytest.mark.parametrize("family", ["toy", "smollm2"])
def test_loss_on_trained_positions_equals_the_full_vocabulary_loss(
    family, tiny_model_dir, smollm2_tiny_dir, data, toyworld
):
    from vialign.train.core import labelled_token_loss

    model_dir = tiny_model_dir if family == "toy" else smollm2_tiny_dir
    model, _, padded, packed = packed_and_padded(model_dir, data, toyworld)
    for batch in (padded, packed):
        full_loss, _, full_grads = loss_and_grads(model, batch)
        keep = batch["trained_positions"]
        assert 0 < len(keep) < batch["labels"].shape[1] - 1, "some positions need no logits"
        model.zero_grad()
        inputs = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
        outputs = model(**inputs, logits_to_keep=keep)
        assert outputs.logits.shape[1] == len(keep)
        loss = labelled_token_loss(outputs, batch["labels"][:, 1:].index_select(1, keep))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        assert loss.item() == pytest.approx(full_loss, abs=1e-5)
        assert grads.keys() == full_grads.keys()
        for k in grads:
            assert torch.allclose(grads[k], full_grads[k], atol=1e-6, rtol=1e-4), k


def test_packed_samples_never_see_or_predict_each_other(tiny_model_dir, data, toyworld):
    from vialign.train.data import pack_rows

    model, rows, padded, packed = packed_and_padded(tiny_model_dir, data, toyworld)
    lengths = [len(r["input_ids"]) for r in rows]
    layout = pack_rows(lengths, sum(lengths) // 2)
    shared = next(k for k, row in enumerate(layout) if len(row) >= 2)
    positions, labels = packed["position_ids"][shared], packed["labels"][shared]
    starts = [i for i in range(len(positions)) if positions[i] == 0]
    assert len(starts) >= 2 and all(labels[s] == -100 for s in starts), "no label crosses a sample boundary"
    with torch.no_grad():
        padded, packed = model_inputs(padded), model_inputs(packed)
        alone, together = model(**padded).logits, model(**packed).logits
        changed = {**packed, "input_ids": packed["input_ids"].clone()}
        first = changed["input_ids"][shared, : lengths[layout[shared][0]]]
        text = first != model.config.image_token_id
        first[text] = next(t for t in range(5, 9) if t != model.config.image_token_id and t not in first)
        perturbed = model(**changed).logits
    for k, row in enumerate(layout):
        start = 0
        for i in row:
            n = lengths[i]
            assert torch.allclose(together[k, start : start + n], alone[i, :n], atol=1e-5), (
                f"sample {i} differs"
            )
            start += n
    later = slice(lengths[layout[shared][0]], sum(lengths[i] for i in layout[shared]))
    assert torch.equal(perturbed[shared, later], together[shared, later]), (
        "an earlier sample changed a later one"
    )


def test_pack_rows_balances_rows_under_the_capacity_and_keeps_long_samples_alone():
    from vialign.train.data import pack_rows

    lengths = [5, 3, 9, 2, 4, 12]
    rows = pack_rows(lengths, capacity=10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert [5] in rows, "longer than the capacity: a row of its own"
    loads = sorted(sum(lengths[i] for i in r) for r in rows if r != [5])
    assert loads == [7, 7, 9], "three rows (23 tokens, capacity 10), as even as the lengths allow"
    assert pack_rows([6, 6, 6], capacity=10) == [[0], [1], [2]], "two per row would overflow"
    # longest-first alone leaves 7 | 5 here; a swap between the rows evens them to 6 | 6
    assert sorted(sum([3, 3, 2, 2, 2][i] for i in row) for row in pack_rows([3, 3, 2, 2, 2], capacity=7)) == [
        6,
        6,
    ]


def trainer_settings_classes():
    from vialign.curate.train import RewardModelTrainerSettings
    from vialign.train.dpo import DPOSettings
    from vialign.train.settings import LMTrainSettings

    return {"sft": SFTSettings, "dpo": DPOSettings, "rm": RewardModelTrainerSettings, "lm": LMTrainSettings}


@pytest.mark.parametrize(
    ("trainer", "field", "value", "reason"),
    [
        ("dpo", "mode", "lit", "responses only"),
        ("dpo", "templates", "t.json", "no template"),
        ("dpo", "packing", True, "pads each batch"),
        ("dpo", "group_by_length", True, "random order"),
        ("rm", "chat_format", "vicuna_v1", "preprocess"),
        ("rm", "mode", "lit", "scores"),
        ("rm", "packing", True, "padded"),
        ("lm", "stage", "full", "no vision tower"),
        ("lm", "lora", {"enabled": True}, "whole"),
        ("lm", "chat_format", "plain", "vicuna_v1"),
        ("lm", "packing", False, "padded"),
    ],
)
def test_a_field_a_trainer_would_ignore_is_refused_with_the_reason(trainer, field, value, reason):
    cls = trainer_settings_classes()[trainer]
    with pytest.raises(ValueError, match=reason):
        cls(**{field: value})


@pytest.mark.parametrize("trainer", ["sft", "dpo", "rm", "lm"])
def test_training_args_pass_through_to_transformers_and_named_ones_are_refused(trainer, tmp_path):
    from vialign.config import load_settings
    from vialign.train.core import training_arguments

    cls = trainer_settings_classes()[trainer]
    settings = load_settings(
        cls, overrides=["training_args.max_grad_norm=0.5", "training_args.optim=adafactor", "use_cpu=true"]
    )
    args = training_arguments(tmp_path, settings)
    assert args.max_grad_norm == 0.5 and args.optim == "adafactor"
    with pytest.raises(ValueError, match="set by vialign from 'lr'"):
        cls(training_args={"learning_rate": 1.0})
    with pytest.raises(ValueError, match="no such field"):
        cls(training_args={"max_grad_nrom": 1.0})


def test_packed_rows_default_to_four_times_the_longest_sample_within_max_length():
    from vialign.train.data import PackedSFTCollator

    assert PackedSFTCollator(0).capacity([100, 300, 50]) == 1200
    assert PackedSFTCollator(0, max_tokens=256).capacity([100, 300, 50]) == 256
    assert PackedSFTCollator(0, row_tokens=128).capacity([100, 300, 50]) == 128
    rows = [{"input_ids": [5] * n, "labels": [5] * n} for n in (120, 90, 80, 75, 60, 40, 33, 30)]
    ids = PackedSFTCollator(0)(rows)["input_ids"]
    assert ids.shape[0] == 2 and 1 - sum(len(r["input_ids"]) for r in rows) / ids.numel() < 0.02


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_a_half_precision_checkpoint_trains_float32_master_weights(tiny_model_dir, compute, monkeypatch):
    from vialign.models import precision
    from vialign.train.core import prepare_for_training

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    model, _ = load_llava(tiny_model_dir, dtype=torch.bfloat16)
    settings = SFTSettings(use_cpu=True, dtype=compute, lora={"enabled": True, "r": 4, "alpha": 8})
    model, _ = prepare_for_training(model, settings)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32}, "AdamW steps on float32 master weights"
    assert frozen == ({torch.float32} if compute == "float32" else {torch.bfloat16}), (
        "without autocast every layer is float32; under autocast frozen weights keep the checkpoint's dtype"
    )


def test_the_manifest_reports_throughput_after_the_first_step(tiny_model_dir, data, toyworld, tmp_path):
    manifest = run(tiny_model_dir, data, toyworld, tmp_path / "o", batch_size=4, max_steps=3)
    assert manifest.counts["steady_tokens_per_s"] > 0
    assert "peak_gpu_mb" not in manifest.counts, "no GPU here"
