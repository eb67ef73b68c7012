"""CLIP, SigLIP, CoCa and CatLIP as one engine task: an open_clip model (CatLIP: its image tower and a word head),
the shard loader, the objective's loss (`training.contrastive.objectives`), zero-shot and retrieval evaluation, and
final weights open_clip loads.

    from training.engine import fit
    fit(ContrastiveTask(cfg, shards), cfg, out_dir="runs/demo/encoder")

Besides the engine's files, a run leaves `model.pt` (`open_clip.create_model_and_transforms(name,
pretrained=".../model.pt")`, after `pipeline.core.model_configs.register_model_configs()` for our tiny configs),
`model_config.json`, and for CatLIP `catlip_vocab.json` and `catlip_head.safetensors`.

With `holdout` set, the stage passes a probe (`filtering.holdout.HoldoutProbe`): the held-out samples are skipped,
every evaluation estimates the model's AUROC as a filter on them (`training.contrastive.holdout`), the weights with
the best estimate become model.pt, and `holdout.json` records the estimates, the chosen step and the Platt fit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn

from pipeline.core.config import ConfigError
from pipeline.core.layout import join
from pipeline.core.model_configs import register_model_configs
from training.contrastive.config import TrainConfig
from training.contrastive.data import TokenEncoder, fast_train_transform
from training.contrastive.eval import Evaluator, flat_metrics, pair_scores
from training.contrastive.holdout import HoldoutTracker, SkipHeldOut
from training.contrastive.models import build_model, check_model_name, param_groups, set_patch_dropout
from training.contrastive.objectives import make_objective, temperature_and_bias
from training.contrastive.vocab import WordTargets, run_vocab
from training.data import ShardStream, make_loader
from training.engine import checkpoint as ckpt
from training.engine.run_dir import RunDir
from training.engine.task import Task


class ContrastiveTask(Task):
    """An image-text encoder trained with `cfg.objective` on the webdataset `shards`."""

    def __init__(self, cfg: TrainConfig, shards: list[str], probe=None):
        self.cfg, self.shards = cfg, list(shards)
        self.name = f"train-{cfg.objective}"
        self.precision = cfg.model.precision
        self.batch_size = cfg.data.batch_size
        self.evaluates = cfg.eval.zeroshot is not None or cfg.eval.retrieval is not None
        self.probe = probe if cfg.holdout is not None else None  # the held-out pairs (filtering.holdout)
        self.eval_every = math.gcd(cfg.eval.every_steps if self.evaluates else 0,
                                   cfg.holdout.every_steps if self.probe is not None else 0)
        self.vocab: list[str] = []  # CatLIP's label words (prepare builds them)
        self.done = cfg.steps  # steps done at the next evaluation (on_step_start keeps it current)

    @property
    def catlip(self) -> bool:
        return self.cfg.objective == "catlip"

    def prepare(self, out_dir: str) -> None:
        """Fail on a bad model name before workers start; build CatLIP's vocabulary once per run."""
        model = self.cfg.model
        hub = (model.pretrained or "").startswith(("hf-hub:", "local-dir:"))  # then the source names the model
        name = check_model_name(model.pretrained if hub else model.name)
        if self.cfg.objective == "coca":
            import open_clip

            if "multimodal_cfg" not in (open_clip.get_model_config(name) or {}):
                raise ConfigError(f"model.name: objective coca needs a CoCa model (with multimodal_cfg), not {name!r}")
        if self.catlip:
            self.vocab = run_vocab(self.cfg.loss, self.shards, out_dir)

    def setup(self, rank: int, world: int, device: torch.device) -> nn.Module:
        register_model_configs()  # this worker's open_clip learns our tiny configs
        cfg = self.cfg
        self.built = build_model(cfg.model, cfg.objective, len(self.vocab), cfg.data.augment.open_clip_cfg())
        clip = self.built.clip
        if cfg.objective != "siglip" and getattr(clip, "logit_bias", None) is not None:
            clip.logit_bias.requires_grad_(False)  # unused by this loss; DDP would wait for its gradient
        self.objective = make_objective(cfg.objective, cfg.loss, rank, world)
        self.device = device
        self.evaluator = None
        if rank == 0 and self.evaluates:
            words = WordTargets(self.vocab) if self.catlip else None  # CatLIP's zero-shot uses its word head
            self.evaluator = Evaluator(cfg.eval, self.built.preprocess_val, self.built.tokenizer, words)
        self.tracker = HoldoutTracker(self.probe, cfg.holdout) if rank == 0 and self.probe is not None else None
        return self.built.model

    def param_groups(self, model: nn.Module, weight_decay: float) -> list[dict]:
        return param_groups(model, weight_decay)

    def batches(self, rank: int, world: int, seed: int) -> Iterator[dict]:
        data = self.cfg.data
        encode = WordTargets(self.vocab) if self.catlip else TokenEncoder(self.built.tokenizer)
        preprocess = fast_train_transform(self.built.preprocess_train)  # open_clip's transform, in one resize
        args = (self.shards, preprocess, encode, rank, world, data.seed + seed, data.shuffle_buffer)
        stream = SkipHeldOut(*args, held_out=self.probe.split) if self.probe is not None else ShardStream(*args)
        for images, texts, skipped in make_loader(stream, data.batch_size, data.loader_workers):
            # (B, 3, H, W), (B, T) tokens or (B, V) caption words, (B,) samples dropped before each
            yield {"image": images, "text": texts, "skipped": skipped}

    def loss(self, model: nn.Module, batch: dict) -> dict:
        image, text = batch["image"], batch["text"]
        out = model(image) if self.catlip else model(image, text)
        return self.objective(out, batch)

    def on_step_start(self, step: int, total: int) -> None:
        self.done = step + 1
        tuning = self.cfg.model.unmasked_tuning_steps
        if tuning and step >= total - tuning:  # FLIP: the last steps see every patch, as evaluation does
            set_patch_dropout(self.built.clip, 0.0)

    def after_update(self, step: int) -> None:
        clip = self.built.clip
        if getattr(clip, "logit_scale", None) is not None:
            with torch.no_grad():
                clip.logit_scale.clamp_(0, math.log(100))  # as open_clip: temperature no lower than 1/100

    def step_metrics(self) -> dict[str, float]:
        return temperature_and_bias(self.built.clip)

    def evaluate(self) -> dict:
        """Zero-shot / retrieval at their steps; the held-out estimate at its steps. After the last step the
        held-out check first picks the weights to export, and the other evaluations describe those weights."""
        final, out = self.done >= self.cfg.steps, {}
        if self.tracker is not None and (final or self.done % self.cfg.holdout.every_steps == 0):
            clip = self.built.clip
            score = partial(self.holdout_scores, clip)
            was_training = clip.training
            clip.eval()
            try:
                result = self.tracker.choose(self.done, clip, score) if final else \
                    self.tracker.measure(self.done, clip, score)
            finally:
                clip.train(was_training)
            out["holdout"] = {k: v for k, v in result.items() if not isinstance(v, dict | list) or final}
        every = self.cfg.eval.every_steps
        if self.evaluator is not None and (final or (every and self.done % every == 0)):
            out.update(self.evaluator(self.built.model, self.built.clip, self.device))
        return out

    def holdout_scores(self, clip: nn.Module, images: list, captions: list[str]):
        return pair_scores(clip, self.built.tokenizer, self.built.preprocess_val, images, captions, self.device,
                           self.cfg.eval.batch_size).numpy()

    def extra_state(self) -> dict[str, torch.Tensor]:
        return self.tracker.state() if getattr(self, "tracker", None) is not None else {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if getattr(self, "tracker", None) is not None:
            self.tracker.load_state(tensors)

    def eval_metrics(self, result: dict) -> dict[str, float]:
        return flat_metrics(result)

    def export(self, run: RunDir, evaluation: dict) -> dict:
        """model.pt and model_config.json (open_clip loads them by name), CatLIP's word head."""
        built = self.built
        # A CLIP config trained with the sigmoid loss got a logit bias its named config lacks: leave it out of
        # model.pt so `create_model_and_transforms(name, pretrained=model.pt)` loads strictly; the embeddings do
        # not use it.
        extra = {}
        if "init_logit_bias" in built.extra_kwargs:
            extra["logit_bias"] = float(built.clip.logit_bias.detach())
        ckpt.save_weights(run.path("model.pt"), built.clip, drop=tuple(extra))
        with open(run.path("model_config.json"), "w") as f:
            json.dump({"name": self.cfg.model.name, "model_cfg": built.model_cfg, **extra}, f, indent=1)
        if self.catlip:
            ckpt.save_module(run.path("catlip_head.safetensors"), built.model.head)
        out = {"weights": join(run.url, "model.pt"), "vocab_size": len(self.vocab)}
        if "holdout" in evaluation:  # which weights model.pt holds, and how well they filter
            with open(run.path("holdout.json"), "w") as f:
                json.dump(evaluation["holdout"], f, indent=1)
            out["holdout"] = evaluation["holdout"]
        return out
