"""The actor-pool runner's resource plan: reads always get a CPU, GPUs are used when there, never invented."""

from __future__ import annotations

import pytest

from pipeline.core.config import ConfigError
from pipeline.execution.actor_pool import ActorPoolConfig, plan_resources


def test_resources_leave_a_cpu_for_reads_and_refuse_a_missing_gpu():
    cfg = ActorPoolConfig(actors=4)
    plan = plan_resources(cfg, {"cpus": 2, "gpus": 0})
    assert (plan["actors"], plan["actor_cpus"], plan["read_cpus"], plan["actor_gpus"]) == (1, 1, 1, 0)
    assert plan["device"] == "cpu"
    plan = plan_resources(cfg, {"cpus": 8, "gpus": 0})
    assert plan["actors"] == 4 and plan["actor_cpus"] * 4 + plan["read_cpus"] <= 8
    plan = plan_resources(cfg, {"cpus": 16, "gpus": 2})
    assert plan["actors"] == 2 and plan["actor_gpus"] == 1 and plan["device"] == "cuda"
    plan = plan_resources(cfg, {"cpus": 1, "gpus": 0})
    assert plan["actor_cpus"] + plan["read_cpus"] <= 1  # a 1-CPU cluster still runs: reads and actor share it
    with pytest.raises(ConfigError, match="score: .*has none"):
        plan_resources(ActorPoolConfig(device="cuda"), {"cpus": 4, "gpus": 0}, stage="score")


def test_without_a_model_reads_are_the_whole_stage():
    plan = plan_resources(ActorPoolConfig(actors=4, read_num_cpus=2), {"cpus": 8, "gpus": 1}, with_model=False)
    assert (plan["actors"], plan["actor_cpus"], plan["actor_gpus"], plan["read_cpus"]) == (0, 0, 0, 2)
