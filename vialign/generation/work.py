"""What a resumable stage works on: how records are batched, sharded and spread over Ray actors, and the
row each record yields. Shared by the local runner and the Ray engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from vialign.choices import Engine
from vialign.config import Settings


class RunnerSettings(Settings):
    batch_size: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1, description="process only the first N selected records")
    shard: str | None = Field(None, description="'i/N': this process takes records i, i+N, i+2N, ...")
    engine: Engine = "local"
    ray_actors: int = Field(1, ge=1, description="model replicas (one per Ray actor)")

    @field_validator("shard")
    @classmethod
    def _shard_form(cls, value: str | None) -> str | None:
        if value is not None:
            i, sep, n = value.partition("/")
            if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
                raise ValueError(f"shard {value!r} must look like i/N with 0 <= i < N, e.g. 0/4")
        return value


@dataclass
class Row:
    """One record's outcome: `value` (JSON-able) when ok, else `error`."""

    id: str
    value: Any = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ok": self.error is None, "value": self.value, "error": self.error}
