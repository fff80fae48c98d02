"""SFT data: encoded samples in memory, images read lazily by the collator (in dataloader workers).

Padding-free packing: a batch's samples (drawn in random order, as without packing) are laid
side by side in as few rows as fit `row_tokens`, with position ids restarting at each sample and no
attention mask. transformers reads restarting position ids as packed sequences: a block-diagonal
causal mask under SDPA/eager, variable-length kernels under flash-attention, so no token attends
across a sample boundary. Every sample's first label is ignored (nothing precedes it in its own
sequence), so the batch's loss and gradients equal those of the padded batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vialign.models.encoding import IGNORE_INDEX, Encoded
from vialign.models.families import family_of
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
    """Right-pads a batch and turns every image of it, in order, into the image processor's outputs a
    forward pass takes (`image_inputs`: LLaVA's `pixel_values`, LLaVA-NeXT's with `image_sizes`); adds
    the batch's `trained_positions`."""

    pad_token_id: int
    image_processor: Any = None
    image_inputs: tuple[str, ...] = ("pixel_values",)
    # the family's completion of a batch (`ModelFamily.model_inputs`: Qwen2-VL's token types and packed
    # M-RoPE positions), given the batch and, when packed, its samples row by row
    model_inputs: Callable[[dict, list | None], dict] | None = None

    @classmethod
    def of(cls, processor: Any, **fields: Any) -> SFTCollator:
        """The collator for a processor's model family (its image inputs and batch completion)."""
        family = family_of(processor)
        return cls(
            processor.tokenizer.pad_token_id,
            processor.image_processor,
            family.image_inputs,
            family.model_inputs(processor),
            **fields,
        )

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
        return self.completed(self.with_images(with_trained_positions(batch), rows), None)

    def completed(self, batch: dict[str, Any], packed: list[list[dict[str, Any]]] | None) -> dict[str, Any]:
        return self.model_inputs(batch, packed) if self.model_inputs else batch

    def with_images(
        self, batch: dict[str, torch.Tensor], rows: list[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        paths = [p for r in rows for p in r.get("images", [])]
        if paths:
            images = [Image.open(p).convert("RGB") for p in paths]
            processed = self.image_processor(images=images, return_tensors="pt")
            batch.update({name: processed[name] for name in self.image_inputs})
        return batch


@dataclass
class PackedSFTCollator(SFTCollator):
    """A batch's samples packed into balanced rows of at most `row_tokens` tokens (default: four times
    the batch's longest sample, capped by `max_tokens`)."""

    row_tokens: int | None = None
    max_tokens: int = 2048

    def capacity(self, lengths: list[int]) -> int:
        # On SDPA/eager a row costs attention over its whole width. Rows of about four long samples
        # measured best on a SmolLM2-sized LLaVA (1.80× the padded batch's tokens/s, 2.5% padding; rows
        # of two: 1.78×, 7%); an attention-bound tiny model prefers two (1.37× vs 1.10×).
        # Flash-attention varlen has no such cost: set pack_tokens high there.
        return self.row_tokens or min(self.max_tokens, 4 * max(lengths))

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(r["input_ids"]) for r in rows]
        packed = [[rows[i] for i in row] for row in pack_rows(lengths, self.capacity(lengths))]
        width = max(sum(len(r["input_ids"]) for r in row) for row in packed)
        input_ids = torch.full((len(packed), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(packed), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(packed), width), dtype=torch.long)
        for k, row in enumerate(packed):
            start = 0
            for sample in row:
                n = len(sample["input_ids"])
                input_ids[k, start : start + n] = torch.tensor(sample["input_ids"])
                labels[k, start + 1 : start + n] = torch.tensor(sample["labels"][1:])
                positions[k, start : start + n] = torch.arange(n)
                start += n
            positions[k, start:] = torch.arange(width - start)  # the tail of pads is a sequence of its own
        # transformers reads packing off position ids only without a cache (a training-time forward in eval
        # mode would otherwise build one and attend across samples)
        batch = {"input_ids": input_ids, "labels": labels, "position_ids": positions, "use_cache": False}
        # images in the order their tokens appear: row by row, sample by sample
        batch = self.with_images(with_trained_positions(batch), [sample for row in packed for sample in row])
        return self.completed(batch, packed)


def trained_positions_of(labels: torch.Tensor) -> torch.Tensor:
    """Positions of a batch whose next token is trained in some row: the only logits a loss needs."""
    return torch.nonzero((labels[:, 1:] != IGNORE_INDEX).any(dim=0)).squeeze(1)


def with_trained_positions(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its `trained_positions`, built here in the data loader: in the training step on a
    GPU, `nonzero` would wait for the device."""
    return {**batch, "trained_positions": trained_positions_of(batch["labels"])}


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into as few rows of at most `capacity` tokens as balancing allows, rows as even as
    possible (longest first, each to the emptiest row, then swaps between the fullest and the emptiest
    row while they even the two out), so the padding to the widest row stays small. A sample longer
    than `capacity` gets a row of its own."""
    alone = [[i] for i in range(len(lengths)) if lengths[i] > capacity]
    rest = sorted((i for i in range(len(lengths)) if lengths[i] <= capacity), key=lambda i: -lengths[i])
    count = -(-sum(lengths[i] for i in rest) // capacity) if rest else 0
    while rest:
        rows: list[list[int]] = [[] for _ in range(count)]
        load = [0] * count
        for i in rest:
            k = min(range(count), key=load.__getitem__)
            rows[k].append(i)
            load[k] += lengths[i]
        even_out(rows, load, lengths)
        if max(load) <= capacity:
            return alone + rows
        count += 1
    return alone


def even_out(rows: list[list[int]], load: list[int], lengths: list[int]) -> None:
    """Swap (or move) samples between the fullest and the emptiest row while that narrows the gap."""
    for _ in range(4 * sum(len(r) for r in rows)):
        full, empty = max(range(len(rows)), key=load.__getitem__), min(range(len(rows)), key=load.__getitem__)
        gap = load[full] - load[empty]
        best, swap = 0, None
        for a in rows[full]:
            for b in [*rows[empty], None]:
                shift = lengths[a] - (lengths[b] if b is not None else 0)
                if 0 < shift < gap and min(shift, gap - shift) > best:
                    best, swap = min(shift, gap - shift), (a, b, shift)
        if swap is None:
            return
        a, b, shift = swap
        rows[full].remove(a)
        rows[empty].append(a)
        if b is not None:
            rows[empty].remove(b)
            rows[full].append(b)
        load[full], load[empty] = load[full] - shift, load[empty] + shift


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of pad tokens over all batches when each batch is padded to its longest sample."""
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / padded
