"""The embedded Ray's workers run at `ray.worker_niceness` (0 shares the CPUs fairly with the rest of a machine,
where Ray's own 15, the default, lets any busy process starve them)."""

from __future__ import annotations

import os

from pipeline.runtime import RayConfig


def test_the_embedded_rays_tasks_and_actors_run_at_the_configured_nice_value_not_rays_15(
        ray_local, ray_local_niceness) -> None:
    ray = ray_local

    @ray.remote(num_cpus=0.1)
    def task_niceness() -> int:
        return os.nice(0)  # adds 0: the process's nice value

    @ray.remote(num_cpus=0.1)
    class Actor:
        def niceness(self) -> int:
            return os.nice(0)

    actor = Actor.remote()
    try:
        assert RayConfig().worker_niceness is None  # a user's run keeps Ray's own unless the config sets it
        assert ray_local_niceness != 15  # the session's configured value, not Ray's own default
        assert ray.get(task_niceness.remote()) == ray_local_niceness
        assert ray.get(actor.niceness.remote()) == ray_local_niceness
    finally:
        ray.kill(actor)
