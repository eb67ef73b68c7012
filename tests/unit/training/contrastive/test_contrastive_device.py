"""Device-strict runs of the contrastive task: CLIP, SigLIP, CoCa and CatLIP set up, take a loss and evaluate with
the model on a fake CUDA device (`fake_cuda`: FakeTensorMode, no GPU needed), where a tensor left on the CPU fails
the op that meets it.

Not run that way, and why: the backward pass (the autograd engine asks the CUDA driver for a context for a fake
CUDA tensor; the generators' tests take their backward passes on `meta`, and open_clip's losses create their labels
on the logits' device); the metrics themselves (`zeroshot_metrics`, `retrieval_metrics`: top-k, ranks and means
read values, by design on the CPU: here they are replaced by checks that what reaches them is on the CPU); the
held-out probe's `pair_scores` (its scores leave as numpy). Images are decoded and preprocessed on the CPU outside
the fake mode, as the loader's processes do.
"""

from __future__ import annotations

import pytest
import torch
from fake_cuda import fake_cuda, real_constants
from test_contrastive_objectives import RUNS, tiny_run

from training.contrastive import eval as contrastive_eval
from training.contrastive.config import EvalConfig
from training.contrastive.task import ContrastiveTask

pytestmark = pytest.mark.filterwarnings("ignore:Accessing the data pointer of FakeTensor")
VOCAB = ["red", "green", "blue", "circle", "square", "triangle"]


def task_on_cuda(objective: str, shapes) -> tuple[ContrastiveTask, object]:
    model, extra, _ = RUNS[objective]
    ev = {"zeroshot": {"shards": shapes["test"], "classnames": shapes["classnames"]},
          "retrieval": {"shards": shapes["test"]}, "max_samples": 8, "batch_size": 4}
    cfg = tiny_run(objective, model, extra).model_copy(update={"eval": EvalConfig(**ev)})
    task = ContrastiveTask(cfg, [])
    if task.catlip:
        task.vocab = VOCAB  # prepare's vocabulary, without reading the shards
    return task, cfg


@pytest.mark.parametrize("objective", list(RUNS))
def test_setup_a_loss_and_evaluation_run_on_the_device(objective, shapes, monkeypatch):
    task, cfg = task_on_cuda(objective, shapes)
    reached = {}

    def cpu_only(name):
        def check(*tensors, **_):
            reached[name] = [t.device.type for t in tensors if torch.is_tensor(t)]
            return {"samples": tensors[0].shape[0]}
        return check

    monkeypatch.setattr(contrastive_eval, "zeroshot_metrics", cpu_only("zeroshot"))
    monkeypatch.setattr(contrastive_eval, "retrieval_metrics", cpu_only("retrieval"))
    batches = contrastive_eval.shard_batches
    decoded = real_constants(lambda *a: list(batches(*a)))  # drawn to the end outside the fake mode
    monkeypatch.setattr(contrastive_eval, "shard_batches", lambda *a: iter(decoded(*a)))
    with fake_cuda() as cuda:
        model = task.setup(0, 1, cuda).to(cuda)  # as the engine: setup, then the module to the device
        assert all(p.device.type == "cuda" for p in model.parameters())
        size = task.built.clip.visual.image_size
        size = size if isinstance(size, tuple) else (size, size)
        text = torch.rand(4, len(VOCAB)) if task.catlip else task.built.tokenizer(["a red circle"] * 4)
        parts = task.loss(model, {"image": torch.randn(4, 3, *size, device=cuda), "text": text.to(cuda)})
        assert parts["loss"].device.type == "cuda" and parts["loss"].shape == ()
        result = task.evaluate()
    assert reached["zeroshot"] == ["cpu", "cpu"] and result["zeroshot"]["samples"] == 8
    if not task.catlip:  # CatLIP has no text tower to retrieve with
        assert reached["retrieval"] == ["cpu", "cpu"] and result["retrieval"]["samples"] == 8
