"""A Ray Train run whose cluster has no room for its smallest allowed worker group (after lost nodes) fails after
`scaling.room_timeout` seconds, saying how to continue, instead of waiting for nodes forever; one that has room is
left alone. No cluster: `fit` is a stand-in that waits, and the room is given."""

from __future__ import annotations

import threading

import pytest

from training.engine import ray_backend
from training.engine.config import ScalingConfig


class Waiting:
    """`trainer.fit()` of Ray Train waiting for resources: returns only once released."""

    def __init__(self):
        self.release = threading.Event()

    def fit(self):
        self.release.wait()
        return "result"


def test_no_room_fails_after_room_timeout_with_the_command_to_continue(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(ray_backend, "workers_that_fit", lambda resources: 1)
    trainer = Waiting()
    try:
        with pytest.raises(ray_backend.TrainingStalled, match=r"room for 1 worker.*fewer than the 2 it needs.*"
                                                              r"run the same command again"):
            ray_backend._fit_watched(trainer, 2, {"CPU": 2.0}, 0.5, str(tmp_path))
    finally:
        trainer.release.set()


def test_room_enough_waits_for_fit(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(ray_backend, "workers_that_fit", lambda resources: 2)
    trainer = Waiting()
    threading.Timer(3.0, trainer.release.set).start()  # longer than room_timeout: room, so no failure
    assert ray_backend._fit_watched(trainer, 2, {"CPU": 2.0}, 0.5, str(tmp_path)) == "result"


def test_min_workers_cannot_exceed_num_workers() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        ScalingConfig(num_workers=2, min_workers=3)
