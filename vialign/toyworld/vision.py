"""`vialign toyworld vision`: a vision tower that sees the toy world, pretrained before LLaVA's stage 1.

A random frozen tower leaves the projector nothing to read (image reliance 0.03 nats/token, POPE answers
that flip with the seed). Here the tiny CLIP tower learns, supervised, what sits in each cell of a scene's
3×3 grid (shape, colour, size, or empty) from scenes of its own stream ("vision", never the training,
annotation or evaluation scenes), rendered as the world renders its images. Its patch features then name
every object and its place, which is what POPE, VQA and captions ask; LLaVA's stage 1 follows unchanged.
The output is a plain CLIP vision checkpoint with its image processor: `model assemble --vision` takes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field
from transformers import AutoModel, CLIPVisionModel, Trainer

from vialign.manifest import Manifest, stage_manifest
from vialign.models.tiny import TinyModelSettings, image_processor, vision_config
from vialign.progress import on_terminal
from vialign.stage import StageContext
from vialign.toyworld.scene import COLOURS, GRID, SHAPES, SIZES, Scene, render_scene, sample_scene
from vialign.train.checkpoints import SealCheckpoint, resume_target
from vialign.train.core import ProgressLinesCallback, training_arguments
from vialign.train.settings import TrainerSettings

STREAM = "vision"
HELD_OUT_STREAM = "vision-heldout"
# per cell: index 0 is "empty", then the world's values in their order
ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES}


class VisionPretrainSettings(TrainerSettings):
    """`toyworld vision`: the tower's shape, how many scenes it sees, and its Trainer settings."""

    trainer = "`toyworld vision`"
    images: int = Field(4000, ge=1, description="training scenes rendered from the 'vision' stream")
    held_out: int = Field(
        500, ge=1, description="scenes of the 'vision-heldout' stream the accuracy is read on"
    )
    lr: float = Field(2e-3, gt=0)
    max_steps: int = 600
    batch_size: int = 64
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    model: TinyModelSettings = Field(default_factory=TinyModelSettings, description="the tower's shape")


def cell_labels(scene: Scene) -> dict[str, torch.Tensor]:
    """Per attribute, the class of each grid cell in row-major order (0: no object there)."""
    labels = {name: torch.zeros(GRID * GRID, dtype=torch.long) for name in ATTRIBUTES}
    for obj in scene.objects:
        for name, values in ATTRIBUTES.items():
            labels[name][obj.cell] = values.index(getattr(obj, name)) + 1
    return labels


class SceneCells(torch.utils.data.Dataset):
    """Scenes of one stream, rendered and processed on demand (any index regenerates alone)."""

    def __init__(self, seed: int, stream: str, count: int, world_image_size: int, processor):
        self.seed, self.stream, self.count = seed, stream, count
        self.world_image_size, self.processor = world_image_size, processor

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        scene = sample_scene(self.seed, self.stream, index)
        image = render_scene(scene, self.world_image_size)
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, **{f"{k}_labels": v for k, v in cell_labels(scene).items()}}


class CellClassifier(torch.nn.Module):
    """The tower, and one linear head per attribute on its last layer's patch features pooled to the
    3×3 grid (the features LLaVA's projector reads with vision_feature_layer -1)."""

    def __init__(self, tower: CLIPVisionModel):
        super().__init__()
        self.tower = tower
        hidden = tower.config.hidden_size
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(hidden, len(values) + 1) for name, values in ATTRIBUTES.items()}
        )

    def cell_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.tower(pixel_values=pixel_values).last_hidden_state[:, 1:]  # CLS dropped, as LLaVA does
        side = int(patches.shape[1] ** 0.5)
        grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)
        return torch.nn.functional.adaptive_avg_pool2d(grid, GRID).flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, **labels: torch.Tensor) -> dict[str, torch.Tensor]:
        cells = self.cell_features(pixel_values)
        logits = {name: head(cells) for name, head in self.heads.items()}
        out: dict[str, torch.Tensor] = {"logits": torch.cat(list(logits.values()), dim=-1)}
        if labels:
            out["loss"] = sum(
                torch.nn.functional.cross_entropy(
                    logits[name].flatten(0, 1).float(), labels[f"{name}_labels"].flatten()
                )
                for name in ATTRIBUTES
            )
        return out


@torch.no_grad()
def held_out_accuracy(model: CellClassifier, dataset: SceneCells, batch_size: int = 128) -> dict[str, float]:
    """Per attribute, the share of cells classified right; `scene` is the share of scenes with every
    cell's every attribute right; `presence` is object-or-empty per cell."""
    model.eval()
    device = next(model.parameters()).device
    right = {name: 0 for name in ATTRIBUTES} | {"presence": 0, "scene": 0}
    cells = 0
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        pixels = torch.stack([item["pixel_values"] for item in items]).to(device)
        features = model.cell_features(pixels)
        all_right = torch.ones(len(items), GRID * GRID, dtype=torch.bool)
        for name, head in model.heads.items():
            predicted = head(features).argmax(-1).cpu()
            truth = torch.stack([item[f"{name}_labels"] for item in items])
            right[name] += int((predicted == truth).sum())
            all_right &= predicted == truth
            if name == "shape":
                right["presence"] += int(((predicted > 0) == (truth > 0)).sum())
        right["scene"] += int(all_right.all(dim=1).sum())
        cells += all_right.numel()
    return {k: round(v / (len(dataset) if k == "scene" else cells), 4) for k, v in right.items()}


def world_settings(toyworld: Path) -> dict:
    manifest = json.loads((toyworld / "manifest.json").read_text())
    return manifest["settings"]


def pretrain_vision_tower(
    toyworld: str | Path, out: str | Path, settings: VisionPretrainSettings
) -> Manifest:
    toyworld, out = Path(toyworld), Path(out)
    world = world_settings(toyworld)
    shape = settings.model.model_copy(update={"vision": "clip"})
    with stage_manifest(out, "toyworld.vision") as manifest:
        torch.manual_seed(settings.seed)
        tower = AutoModel.from_config(vision_config(shape))
        processor = image_processor(shape)
        model = CellClassifier(tower)
        train = SceneCells(world["seed"], STREAM, settings.images, world["image_size"], processor)
        held_out = SceneCells(
            world["seed"], HELD_OUT_STREAM, settings.held_out, world["image_size"], processor
        )
        args = training_arguments(out, settings)
        callbacks = [SealCheckpoint(), *([] if on_terminal() else [ProgressLinesCallback()])]
        trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=callbacks)
        output = trainer.train(resume_from_checkpoint=resume_target(Path(args.output_dir), True))
        accuracy = held_out_accuracy(model.float(), held_out)
        tower.save_pretrained(out)
        processor.save_pretrained(out)
        manifest.inputs = {str(toyworld / "manifest.json"): f"seed {world['seed']}, {world['image_size']} px"}
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = {
            "steps": trainer.state.global_step,
            "train_loss": round(output.training_loss, 4),
            "held_out_accuracy": accuracy,
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    manifest = pretrain_vision_tower(ctx.take("toyworld"), ctx.out, ctx.settings)
    accuracy = manifest.counts["held_out_accuracy"]
    ctx.say(
        f"vision tower in {ctx.out}: held-out cells right: shape {accuracy['shape']:.1%}, colour "
        f"{accuracy['colour']:.1%}, size {accuracy['size']:.1%}; whole scenes {accuracy['scene']:.1%}"
    )
