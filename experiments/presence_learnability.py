"""Why the lab's POPE cannot decide: can the inner LLM learn object presence at all, and from what?

Two arms from the same stage-1 LLaVA (projector pretrained on captions), trained with the lab's SFT
settings (LoRA r 16, alpha 32, lr 4e-4, batch 8, the same steps) on the same presence probes about the
toy world's training scenes ("Is there a red circle in the image?", half yes, half no with absent pairs
that share a colour or a shape with the scene half the time):
- image: the scene as its image, as the lab trains;
- text (the control): the same probe with the scene written out in words before the question, no image.
Both are scored on the world's held-out POPE probes (random, popular, adversarial) as `vialign eval run`
scores them, the text arm with the scene written out the same way. A text arm that learns while the image arm stays at chance puts the
failure in reading presence from image tokens, not in the LLM or the probes.

`--projector` changes the stage-1 projector before the image arm, to test two explanations:
- rescaled: its outputs scaled to the mean norm of the LLM's word embeddings (stage 1 leaves image tokens
  some 50 times larger than any word's embedding);
- word-aligned: refitted from a fresh initialisation to map each cell's tower feature to the sum of the
  LLM's embeddings of its colour and shape words (zero for an empty cell), so that an image token looks
  like the words that name it.

    python experiments/presence_learnability.py --world WORLD --stage1 STAGE1 --out runs/presence
    # the demo's tiny LM, with the demo's SFT settings:
    python experiments/presence_learnability.py --world WORLD --stage1 STAGE1 --out runs/presence-demo \
        --chat-format vicuna_v1 --no-lora --lr 5e-4 --batch-size 32

WORLD: a `vialign toyworld` folder; STAGE1: a LLaVA after stage 1 (e.g. the lab's `stage1` stage).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

from vialign.data.formats import SHORT_ANSWER_SUFFIX
from vialign.evaluate.benches import EvalItem, Pope
from vialign.evaluate.run import EvalSettings, generate_predictions
from vialign.generation.base import GenerationParams, ModelSettings
from vialign.generation.work import RunnerSettings
from vialign.models.encoding import IMAGE_TAG
from vialign.models.loading import load_llava
from vialign.records import write_jsonl
from vialign.toyworld.generate import image_path
from vialign.toyworld.instructions import absent_pairs
from vialign.toyworld.language import neutral_caption
from vialign.toyworld.scene import GRID, Scene, render_scene, sample_scene
from vialign.toyworld.vision import world_settings
from vialign.train.settings import SFTSettings
from vialign.train.sft import train_sft

ARMS = ("image", "text")


def described(scene: Scene, question: str) -> str:
    return f"Scene: {neutral_caption(scene, 0)}\n{question}"


def probe(scene: Scene, want_yes: bool, rng: random.Random) -> tuple[str, str]:
    present = sorted(scene.pairs)
    absent = absent_pairs(scene)
    near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
    if want_yes:
        colour, shape = rng.choice(present)
    else:
        colour, shape = rng.choice(near if near and rng.random() < 0.5 else absent)
    return f"Is there a {colour} {shape} in the image?", "Yes" if want_yes else "No"


def training_probes(seed: int, count: int, arm: str) -> list[dict]:
    rng = random.Random(f"presence:{seed}")
    rows = []
    for j in range(count):
        scene = sample_scene(seed, "train", j)
        question, answer = probe(scene, j % 2 == 0, rng)
        human = f"{IMAGE_TAG}\n{question}" if arm == "image" else described(scene, question)
        row = {
            "id": f"presence-{j}",
            "conversations": [
                {"from": "human", "value": f"{human}\n{SHORT_ANSWER_SUFFIX}"},
                {"from": "gpt", "value": answer},
            ],
        }
        if arm == "image":
            row["image"] = image_path("train", j)
        rows.append(row)
    return rows


def held_out(world: Path, seed: int, arm: str, limit: int) -> list[EvalItem]:
    """The POPE bench's items (random, popular, adversarial interleaved), the first `limit`; in the text
    arm, each with its scene written out before the question and no image."""
    items = Pope().items(world / "eval", Pope.default_prompt)[:limit]
    if arm == "image":
        return items
    return [
        EvalItem(
            i.id, described(sample_scene(seed, "eval", int(Path(i.images[0]).stem)), i.text), [], i.truth
        )
        for i in items
    ]


def score(model: Path, world: Path, items: list[EvalItem], chat_format: str, out: Path) -> dict:
    """POPE accuracy and yes-ratio, generated and parsed as `vialign eval run` does."""
    backend = ModelSettings(chat_format=chat_format).open(str(model))
    params = GenerationParams(max_new_tokens=Pope.max_new_tokens)
    predictions = generate_predictions(
        backend, items, params, out, RunnerSettings(batch_size=32), world, backend.identity(), False, "pope"
    )
    texts = {i: p["prediction"] for i, p in predictions.items()}
    records, _ = Pope().score(items, texts, EvalSettings())
    metrics = Pope().aggregate(records)
    return {
        "accuracy": round(metrics["accuracy"], 3),
        "yes_ratio": round(metrics["yes_ratio"], 3),
        "probes": len(items),
    }


def cell_features(model, processor, scenes: list[Scene], image_size: int) -> torch.Tensor:
    """The tower's patch features, one per grid cell (the tiny tower has one patch per cell)."""
    images = [render_scene(scene, image_size) for scene in scenes]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        patches = [
            model.model.vision_tower(pixel_values=pixels[i : i + 256]).last_hidden_state[:, 1:]
            for i in range(0, len(pixels), 256)
        ]
    features = torch.cat(patches)
    if features.shape[1] != GRID * GRID:
        raise ValueError(f"--projector needs one patch per grid cell; the tower gives {features.shape[1]}")
    return features.flatten(0, 1)


def word_targets(processor, embeddings: torch.Tensor, scenes: list[Scene]) -> torch.Tensor:
    def word(text: str) -> torch.Tensor:
        ids = processor.tokenizer.encode(f" {text}", add_special_tokens=False)
        return embeddings[ids].sum(0)

    targets = torch.zeros(len(scenes), GRID * GRID, embeddings.shape[1])
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            targets[i, obj.cell] = word(obj.colour) + word(obj.shape)
    return targets.flatten(0, 1)


def changed_projector(stage1: Path, how: str, world: dict, out: Path) -> Path:
    model, processor = load_llava(stage1, dtype=torch.float32)
    seed, image_size = world["seed"], world["image_size"]
    scenes = [sample_scene(seed, "train", j) for j in range(1500)]
    features = cell_features(model, processor, scenes, image_size)
    projector = model.model.multi_modal_projector
    embeddings = model.get_input_embeddings().weight.detach()
    if how == "rescaled":
        with torch.no_grad():
            scale = embeddings.norm(dim=-1).mean() / projector(features).norm(dim=-1).mean()
            projector.linear_2.weight.mul_(scale)
            projector.linear_2.bias.mul_(scale)
    else:
        torch.manual_seed(0)
        for layer in (projector.linear_1, projector.linear_2):
            layer.reset_parameters()
        targets = word_targets(processor, embeddings, scenes)
        optimiser = torch.optim.Adam(projector.parameters(), lr=1e-3)
        for _ in range(600):
            pick = torch.randint(0, len(features), (2048,))
            loss = torch.nn.functional.mse_loss(projector(features[pick]), targets[pick])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--stage1", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--limit", type=int, default=360, help="held-out POPE probes (the lab evaluates 120)")
    parser.add_argument("--chat-format", default="tokenizer", help="vicuna_v1 for the demo's tiny LM")
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--projector-lr", type=float, default=None, help="default: --lr")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: image, text")
    parser.add_argument("--no-lora", action="store_true", help="train the LLM whole, as the demo does")
    parser.add_argument("--projector", choices=("stage1", "rescaled", "word-aligned"), default="stage1")
    args = parser.parse_args()
    world = world_settings(args.world)
    seed = world["seed"]
    probes = min(args.probes, len(list((args.world / "images" / "train").glob("*.png"))))
    start = args.stage1
    if args.projector != "stage1":
        start = changed_projector(args.stage1, args.projector, world, args.out / args.projector)
    report = {}
    for arm in args.arms.split(","):
        folder = args.out / arm
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / "probes.jsonl"
        write_jsonl(training_probes(seed, probes, arm), data)
        settings = SFTSettings(
            stage="finetune",
            mode="response",
            chat_format=args.chat_format,
            lora={"enabled": not args.no_lora, "r": 16, "alpha": 32, "dropout": 0.0},
            max_steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            projector_lr=args.projector_lr,
            warmup_ratio=0.05,
        )
        items = held_out(args.world, seed, arm, args.limit)
        before = score(start, args.world, items, args.chat_format, folder / "before.jsonl")
        manifest = train_sft(start, data, folder / "model", settings, image_root=args.world)
        after = score(folder / "model", args.world, items, args.chat_format, folder / "after.jsonl")
        report[arm] = {"before": before, "after": after, "train_loss": manifest.counts["train_loss"]}
        print(arm, json.dumps(report[arm]), flush=True)
    (args.out / "presence.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
