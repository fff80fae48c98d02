"""Scenes of 1–4 coloured shapes on a 3×3 grid, and their rendering to small PNGs.

Colours and shapes are drawn from skewed distributions so that some objects are "popular", which
POPE's popular negatives need. Every random choice comes from a `random.Random` seeded by a string
naming the seed, the stream and the index, so any scene can be regenerated alone, in any process.
"""

from __future__ import annotations

import io
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (50, 90, 235),
    "green": (40, 175, 60),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 205),
    "orange": (245, 140, 30),
}
COLOUR_WEIGHTS = (0.30, 0.22, 0.16, 0.13, 0.10, 0.09)
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SHAPE_WEIGHTS = (0.32, 0.25, 0.18, 0.14, 0.11)
SIZES = ("small", "large")
GRID = 3
CELL_NAMES = (
    "top left",
    "top middle",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom middle",
    "bottom right",
)
BACKGROUND = (16, 16, 16)
MAX_OBJECTS = 4


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def seeded_rng(seed: int, stream: str, index: int) -> random.Random:
    return random.Random(f"vialign-toyworld:{seed}:{stream}:{index}")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    cell: int

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def full_name(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    scene_id: str
    objects: tuple[Obj, ...]

    def to_json(self) -> dict:
        return {"scene_id": self.scene_id, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_json(cls, data: dict) -> Scene:
        return cls(data["scene_id"], tuple(Obj(**o) for o in data["objects"]))

    @property
    def pairs(self) -> set[tuple[str, str]]:
        return {(o.colour, o.shape) for o in self.objects}

    def count(self, *, shape: str | None = None, colour: str | None = None, size: str | None = None) -> int:
        return sum(
            1
            for o in self.objects
            if (shape is None or o.shape == shape)
            and (colour is None or o.colour == colour)
            and (size is None or o.size == size)
        )

    def unique_by(self, attr: str) -> list[Obj]:
        """Objects whose value of `attr` no other object shares (so "the circle" names one object)."""
        values = [getattr(o, attr) for o in self.objects]
        return [o for o in self.objects if values.count(getattr(o, attr)) == 1]


def sample_object(rng: random.Random, cell: int) -> Obj:
    return Obj(
        shape=rng.choices(SHAPES, SHAPE_WEIGHTS)[0],
        colour=rng.choices(list(COLOURS), COLOUR_WEIGHTS)[0],
        size=rng.choice(SIZES),
        cell=cell,
    )


def sample_scene(seed: int, stream: str, index: int, max_objects: int = MAX_OBJECTS) -> Scene:
    rng = seeded_rng(seed, f"scene-{stream}", index)
    n = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    return Scene(f"{stream}-{index:06d}", tuple(sample_object(rng, c) for c in cells))


def _shape_points(shape: str, x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "cross":
        a, b = w / 3, h / 3
        return [
            (x0 + a, y0),
            (x0 + 2 * a, y0),
            (x0 + 2 * a, y0 + b),
            (x1, y0 + b),
            (x1, y0 + 2 * b),
            (x0 + 2 * a, y0 + 2 * b),
            (x0 + 2 * a, y1),
            (x0 + a, y1),
            (x0 + a, y0 + 2 * b),
            (x0, y0 + 2 * b),
            (x0, y0 + b),
            (x0 + a, y0 + b),
        ]
    raise ValueError(f"no polygon for shape {shape!r}")


def render_scene(scene: Scene, size_px: int) -> Image.Image:
    image = Image.new("RGB", (size_px, size_px), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size_px / GRID
    for obj in scene.objects:
        margin = cell * (0.08 if obj.size == "large" else 0.28)
        x0, y0 = obj.col * cell + margin, obj.row * cell + margin
        x1, y1 = (obj.col + 1) * cell - margin - 1, (obj.row + 1) * cell - margin - 1
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon(_shape_points(obj.shape, x0, y0, x1, y1), fill=fill)
    return image


def scene_png(scene: Scene, size_px: int) -> bytes:
    buffer = io.BytesIO()
    render_scene(scene, size_px).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
