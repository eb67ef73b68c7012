"""Step checkpoints: model, optimizer, RNG and a task's extra tensors round-trip; incomplete or half-copied ones are
passed over; weight files holding pickled objects are refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from training.engine import checkpoint as ckpt


def test_a_step_checkpoint_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    path = str(tmp_path / ckpt.step_dir_name(3))
    ckpt.save_rank_rng(path, 0)
    ckpt.save_checkpoint(path, model=model, optimizer=opt, state={"step": 3, "samples_seen": 15}, world=1)
    expected = (torch.rand(3), np.random.rand(), random.random())  # what the RNGs give next

    assert ckpt.latest_checkpoint(str(tmp_path)) == path
    loaded = ckpt.load_checkpoint(path, rank=0)
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2, betas=(0.9, 0.98))
    fresh.load_state_dict(loaded["model"])
    fresh_opt.load_state_dict(loaded["optimizer"])
    ckpt.set_rng_state(*loaded["rng"])
    assert loaded["state"]["step"] == 3
    assert torch.equal(torch.rand(3), expected[0]) and np.random.rand() == expected[1]
    assert random.random() == expected[2]
    # the same next update from the restored optimizer (its moments came back)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def write_checkpoints(root, model: torch.nn.Module, steps: tuple[int, ...]) -> None:
    """Complete single-rank checkpoints of `model` at each step under `root`."""
    opt = torch.optim.AdamW(model.parameters())
    for step in steps:
        path = str(root / ckpt.step_dir_name(step))
        ckpt.save_rank_rng(path, 0)
        ckpt.save_checkpoint(path, model=model, optimizer=opt, state={"step": step, "samples_seen": 0}, world=1)


def test_an_incomplete_checkpoint_is_not_the_latest(tmp_path):
    write_checkpoints(tmp_path, torch.nn.Linear(2, 2), (10, 20))
    (tmp_path / ckpt.step_dir_name(20) / "optimizer.safetensors").unlink()  # a crash mid-copy
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith(ckpt.step_dir_name(10))
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(str(tmp_path / ckpt.step_dir_name(20)))


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_weights_with_a_pickled_object_are_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"weight": torch.zeros(2), "extra": Payload()}, path)
    with pytest.raises(ckpt.CheckpointError, match="refusing to load.*pickled Python objects"):
        ckpt.load_weights(path)
    good = str(tmp_path / "good.pt")
    torch.save({"module.weight": torch.ones(2)}, good)
    assert torch.equal(ckpt.load_weights(good)["weight"], torch.ones(2))


def test_a_half_copied_checkpoint_is_passed_over(tmp_path):
    write_checkpoints(tmp_path, torch.nn.Linear(64, 64), (10, 20))
    weights = tmp_path / ckpt.step_dir_name(20) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an upload cut short: the file exists but is truncated
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith(ckpt.step_dir_name(10))



def test_a_tasks_extra_tensors_are_listed_saved_and_loaded(tmp_path):
    model = torch.nn.Linear(3, 3)
    opt = torch.optim.AdamW(model.parameters())
    ema = {"ema.weight": torch.randn(3, 3), "ema.bias": torch.randn(3)}
    path = str(tmp_path / ckpt.step_dir_name(7))
    ckpt.save_rank_rng(path, 0)
    ckpt.save_checkpoint(path, model=model, optimizer=opt, state={"step": 7, "samples_seen": 7}, world=1, extra=ema)
    loaded = ckpt.load_checkpoint(path)
    assert loaded["extra"].keys() == ema.keys()
    assert all(torch.equal(loaded["extra"][k], v) for k, v in ema.items())
    (tmp_path / ckpt.step_dir_name(7) / ckpt.TASK_STATE).unlink()  # listed in state.json: now incomplete
    assert ckpt.latest_checkpoint(str(tmp_path)) is None

    plain = str(tmp_path / ckpt.step_dir_name(8))  # a checkpoint without extra state (as older runs wrote)
    ckpt.save_rank_rng(plain, 0)
    ckpt.save_checkpoint(plain, model=model, optimizer=opt, state={"step": 8, "samples_seen": 8}, world=1)
    assert ckpt.load_checkpoint(plain)["extra"] == {}
