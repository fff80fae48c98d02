"""The same stage function on Ray Data: `map_batches` over an actor pool, one model per actor.

Rows stream back to the driver, which appends them to the runner's partial file, so a Ray run
resumes exactly like a local one.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

from vialign.generation.work import Row, RunnerSettings


class StageActor:
    """Built once per actor: loads the model through the stage's factory, then serves batches."""

    def __init__(self, factory: Callable[[], Callable[[list[Any]], list[Row]]]):
        self.process = factory()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        rows = self.process(items)
        return {
            "id": [r.id for r in rows],
            "value": [pickle.dumps(r.value) for r in rows],
            "error": [r.error or "" for r in rows],
        }


def ray_rows(pending: list[Any], factory: Callable, settings: RunnerSettings) -> Iterator[list[Row]]:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    dataset = ray.data.from_items([{"item": pickle.dumps(item)} for item in pending])
    results = dataset.map_batches(
        StageActor,
        fn_constructor_args=(factory,),
        batch_size=settings.batch_size,
        concurrency=settings.ray_actors,
        num_cpus=1,
        batch_format="numpy",
    )
    for batch in results.iter_batches(batch_size=settings.batch_size, batch_format="numpy"):
        yield [
            Row(str(i), pickle.loads(v), e or None)
            for i, v, e in zip(batch["id"], batch["value"], batch["error"], strict=True)
        ]
