"""The actor-pool runner wraps a stage's model class to time it (`timed`); the wrapper keeps the model's name, which
Ray Data uses for the operator and the actors' process titles (`ray::MapWorker(MapBatches(DFNScorer))`), and it
crosses to the actors by value, as Ray ships it."""

from __future__ import annotations

import numpy as np
from ray import cloudpickle

from pipeline.execution.actor_pool import MODEL_S, TimedModel, timed


class Brightness:
    def __init__(self, scale: float):
        self.scale = scale

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"score": batch["pixels"].mean(axis=(1, 2)) * self.scale}


def test_the_timed_model_is_named_after_the_model_and_adds_its_seconds_per_row() -> None:
    cls = timed(Brightness)
    assert cls.__name__ == cls.__qualname__ == "Brightness" and issubclass(cls, TimedModel)
    assert timed(Brightness) is cls  # one class per model: Ray Data sees the same callable every stage
    actor = cloudpickle.loads(cloudpickle.dumps(cls))(cls=Brightness, kwargs={"scale": 2.0})
    out = actor({"pixels": np.arange(12, dtype=np.float64).reshape(3, 2, 2)})
    np.testing.assert_allclose(out["score"], [3.0, 11.0, 19.0])
    assert out[MODEL_S].shape == (3,) and (out[MODEL_S] >= 0).all() and len(set(out[MODEL_S])) == 1
