"""The embedded Ray's workers share the CPUs fairly with the rest of the machine (`ray.worker_niceness`)."""

from __future__ import annotations

import os

from pipeline.runtime import RayConfig


def test_the_embedded_rays_tasks_and_actors_run_at_the_configured_nice_value_not_rays_15(ray_local) -> None:
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
        # Ray's default is 15, where any other busy process on the machine takes nearly all the CPU from them
        assert RayConfig().worker_niceness == 0
        assert ray.get(task_niceness.remote()) == 0
        assert ray.get(actor.niceness.remote()) == 0
    finally:
        ray.kill(actor)
