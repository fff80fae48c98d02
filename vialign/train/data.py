"""SFT data: encoded samples in memory, images read lazily by the collator (in dataloader workers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vialign.models.encoding import IGNORE_INDEX, Encoded
from vialign.records import Sample, confined_image_path


class SFTDataset(Dataset):
    def __init__(self, items: list[tuple[Sample, Encoded]], image_root: str | Path | None):
        self.items, self.image_root = items, image_root
        self.lengths = [len(e) for _, e in items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample, encoded = self.items[i]
        images = sample.images[: encoded.n_images]
        if images and self.image_root is None:
            raise ValueError(f"sample {sample.id!r} has images but no image root was given")
        return {
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "images": [confined_image_path(self.image_root, p) for p in images],
        }


@dataclass
class SFTCollator:
    """Right-pads a batch and turns every image of it, in order, into one pixel_values tensor."""

    pad_token_id: int
    image_processor: Any = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[k, :n] = torch.tensor(row["input_ids"])
            labels[k, :n] = torch.tensor(row["labels"])
            attention[k, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        paths = [p for r in rows for p in r.get("images", [])]
        if paths:
            images = [Image.open(p).convert("RGB") for p in paths]
            batch["pixel_values"] = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return batch


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of pad tokens over all batches when each batch is padded to its longest sample."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded
