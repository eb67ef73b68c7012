"""Trained models for the command line (`winnow sample`, `winnow caption`), loaded by the code their stages use: named
by a stage of a pipeline config, or by a checkpoint path for a model trained elsewhere.

    gen = generator_from(Source(cfg, stage="generator"))          # a train-diffusion stage's exported weights
    gen = generator_from(Source(checkpoint="runs/x/generator"))   # a folder with generator.json, or flow.json
    images = gen.sample(["a red circle"], [0])                     # (1, 3, S, S) in [-1, 1]

    models = captioner_from(Source(cfg, stage="caption"))         # a caption stage: captioner, decoding, judge
    models = captioner_from(Source(checkpoint="blip-base"))       # a BLIP folder, a train-clip output, a model.pt
    for row in caption_files(models, ["a.jpg", "b.png"]): ...     # one JSON-able row per file

Images are read by the one decoder (`pipeline.core.images`, its formats and pixel cap) and cropped as the caption
stage crops them; a file that does not decode is a row with its reason. Nucleus captions are seeded per image from
the decoding seed and the image's bytes (sha256), so an image gets the same captions whatever else is captioned
with it, and whatever its file is called.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.layout import join, read_json
from pipeline.core.model_files import KINDS, LOCAL_DIR, expect_folder, folder_kind
from pipeline.core.storage import exists
from pipeline.stages.context import StageContext


@dataclass
class Source:
    """Where a model comes from: `stage` of the pipeline config `pipeline`, or a `checkpoint` path."""

    pipeline: Any = None  # a PipelineConfig
    stage: str | None = None
    checkpoint: str | None = None
    config_path: str | None = None

    def context(self, kinds: tuple[str, ...], what: str) -> tuple[StageContext, Any]:
        """The stage's context and config; a ConfigError names the stages of `kinds` when it is not one."""
        stages = self.pipeline.stages
        known = [n for n, s in stages.items() if s.kind in kinds]
        if self.stage not in stages or stages[self.stage].kind not in kinds:
            found = f"a {stages[self.stage].kind} stage" if self.stage in stages else "not a stage of this config"
            raise ConfigError(f"{self.config_path or 'config'}: --stage {self.stage}: {found}; {what} names a "
                              f"{' or '.join(kinds)} stage (here: {', '.join(known) or 'none'})")
        return StageContext(pipeline=self.pipeline, stage=self.stage, config_path=self.config_path), stages[self.stage]

    def describe(self) -> dict:
        if self.checkpoint:
            return {"checkpoint": self.checkpoint}
        return {"config": self.config_path, "stage": self.stage}


# --- generators ---------------------------------------------------------------------------------------------------
class TrainedGenerator:
    """A trained generator and how it samples: a denoiser with its sampler, or a flow with its temperature."""

    def __init__(self, gen, source: Source, sampler=None, temperature: float | None = None):
        self.gen, self.source, self.sampler, self.temperature = gen, source, sampler, temperature
        self.nfe: int | None = None  # network evaluations per image of the last batch (denoisers)

    def sample(self, prompts: list[str], seeds: list[int]):
        """(B, 3, S, S) in [-1, 1]; image i from prompts[i] and its own seeds[i]."""
        if self.sampler is None:
            return self.gen.images(prompts, seeds)
        images, self.nfe = self.gen(prompts, seeds, self.sampler)
        return images

    def pictures(self, images) -> list:
        from training.generative.diffusion.codec import to_pil

        return to_pil(images)

    def save_grid(self, images, prompts: list[str], path: str) -> None:
        from training.generative.diffusion.generate import save_grid

        save_grid(images, prompts, path)

    def settings(self) -> dict:
        if self.sampler is None:
            return {"generator": "flow", "temperature": self.temperature, **self.source.describe()}
        return {"generator": "denoiser", "sampler": self.sampler.model_dump(mode="json"), **self.source.describe()}


def _encoder_ref(path: str, recorded: dict):
    """`--encoder PATH` for a generator trained elsewhere: an open_clip folder, or a weights file of the recorded
    model name."""
    from training.generative.config import EncoderRef

    if folder_kind(path)[0] == "open_clip":
        return EncoderRef(name=f"{LOCAL_DIR}{path}", source="--encoder")
    return EncoderRef(name=recorded["name"], weights=path, source="--encoder")


def generator_from(source: Source, *, encoder: str | None = None, sampler: dict | None = None,
                   temperature: float | None = None, device: str = "cpu") -> TrainedGenerator:
    """The trained generator `source` names, with the stage's (or the checkpoint's) sampler updated by `sampler`
    (e.g. {"method": "heun", "steps": 18, "guidance": 2}); `encoder` replaces the recorded conditioning weights."""
    from training.generative.config import SamplerConfig

    if source.checkpoint:
        kind = expect_folder(source.checkpoint, ("generator", "flow"), "--checkpoint")
        if kind == "flow":
            from training.generative.flows.config import FlowOptionsConfig
            from training.generative.flows.generate import load_flow_generator

            t = FlowOptionsConfig().temperature if temperature is None else temperature
            return TrainedGenerator(load_flow_generator(source.checkpoint, t, device), source, temperature=t)
        from training.generative.config import EncoderRef
        from training.generative.diffusion.generate import DESCRIPTION, load_generator

        recorded = read_json(join(source.checkpoint, DESCRIPTION))["encoder"]
        ref = _encoder_ref(encoder, recorded) if encoder else \
            EncoderRef(name=recorded["name"], weights=recorded.get("weights"), source=recorded.get("source", ""))
        if not encoder and not exists(ref.files):
            raise ConfigError(f"--checkpoint {source.checkpoint}: it was conditioned on {ref.describe()}, which is "
                              "not there now: give that encoder's weights (or open_clip folder) with --encoder PATH")
        gen = load_generator(source.checkpoint, ref, device, "--checkpoint")
        base = gen.sampler
    else:
        from pipeline.stages.train_diffusion import load_trained

        ctx, cfg = source.context(("train-diffusion",), "sample")
        if cfg.is_flow:
            gen = load_trained(ctx, cfg, device, temperature=temperature)
            return TrainedGenerator(gen, source, temperature=gen.temperature)
        ref = _encoder_ref(encoder, {"name": cfg.encoder.name if cfg.encoder else
                                     ctx.pipeline.stages[cfg.encoder_from].model.name}) if encoder else None
        gen, base = load_trained(ctx, cfg, device, ref), cfg.sample.sampler
    try:
        chosen = SamplerConfig.model_validate({**base.model_dump(), **(sampler or {})})
    except ValueError as err:
        raise ConfigError(f"sampler settings {sampler}: {err}") from None
    return TrainedGenerator(gen, source, sampler=chosen)


# --- captioners ---------------------------------------------------------------------------------------------------
@dataclass
class CaptionModels:
    """A captioner, its decoding settings and (optionally) the judge that scores its captions."""

    captioner: Any  # CaptionerSpec
    decoding: Any  # CaptionerConfig
    judge: Any = None  # CaptionFilterSpec
    calibration: dict | None = None
    ids: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)


def _clip_model_of(path: str, model: str | None, flag: str) -> tuple[str, str | None]:
    """(open_clip model name, weights file) of a train-clip output folder, its model.pt, an open_clip folder, or a
    weights file whose model is `model` (or named by a model_config.json beside it)."""
    kind, found = folder_kind(path)
    if kind == "open_clip":
        return f"{LOCAL_DIR}{path}", None
    if kind == "encoder":
        path = str(Path(path) / "model.pt")
    elif Path(path).is_dir() or not Path(path).is_file():
        raise ConfigError(f"{flag}: {path} is {found if Path(path).is_dir() else 'missing (no such file)'}, not "
                          f"{KINDS['encoder']}, {KINDS['open_clip']} or a weights file")
    beside = Path(path).parent / "model_config.json"
    name = model or (json.loads(beside.read_text()).get("name") if beside.is_file() else None)
    if not name:
        raise ConfigError(f"{flag}: {path} has no model_config.json beside it: name its open_clip model (--model)")
    return name, path


def _judge_spec(ref: str, source: Source, calibration: str | None) -> tuple[Any, str | None]:
    """(the judge's spec, its calibration file) from `--judge`: a train-clip stage of the config, a BLIP ITM folder,
    an open_clip folder, or a train-clip output / weights file."""
    from filtering.capfilt import CaptionFilterSpec
    from pipeline.stages.caption import _weights

    if source.pipeline is not None and ref in source.pipeline.stages:
        ctx, stage = Source(source.pipeline, ref, config_path=source.config_path).context(("train-clip",), "--judge")
        if stage.objective == "catlip":
            raise ConfigError(f"--judge {ref}: trains CatLIP, which has no text tower to judge captions with")
        weights = _weights(ctx, ref)
        if not Path(weights).exists():
            raise ConfigError(f"--judge {ref}: {weights} does not exist; run stage {ref!r} first")
        found = Path(weights).parent / "holdout.json"
        return CaptionFilterSpec(name=stage.model.name, weights=weights), \
            calibration or (str(found) if found.is_file() else None)
    if folder_kind(ref)[0] == "blip_itm":
        return CaptionFilterSpec(backend="blip", weights=ref), None
    name, weights = _clip_model_of(ref, None, "--judge")
    found = Path(weights or ref).parent / "holdout.json" if weights else None
    return CaptionFilterSpec(name=name, weights=weights), \
        calibration or (str(found) if found is not None and found.is_file() else None)


def captioner_from(source: Source, *, judge: str | None = None, calibration: str | None = None,
                   model: str | None = None, decoding: dict | None = None) -> CaptionModels:
    """The captioner `source` names with its decoding settings updated by `decoding`; its judge: a caption stage's
    own, or `judge` (see `_judge_spec`). A judge with a calibration (a holdout.json's Platt fit; BLIP's ITM is one)
    gives P(match) for each caption."""
    from filtering.capfilt import check_distinct, read_calibration, weights_id
    from filtering.captioner import CaptionerConfig, CaptionerSpec, check_captioner

    base, spec, judge_spec, cal = {}, None, None, None
    if source.checkpoint:
        if folder_kind(source.checkpoint)[0] == "blip_caption":
            spec = CaptionerSpec(backend="blip", weights=source.checkpoint)
        else:
            spec = CaptionerSpec(**dict(zip(("name", "weights"), _clip_model_of(source.checkpoint, model,
                                                                               "--checkpoint"), strict=True)))
    else:
        from pipeline.stages import caption

        ctx, cfg = source.context(("caption", "train-clip"), "caption")
        if cfg.kind == "train-clip":
            if cfg.objective != "coca":
                raise ConfigError(f"--stage {source.stage}: trains objective {cfg.objective!r}; a captioner is a "
                                  "CoCa (objective: coca) or a caption stage")
            spec = CaptionerSpec(name=cfg.model.name, weights=caption._weights(ctx, source.stage))
        else:
            found = caption.resolve(ctx, cfg, build=False)
            spec, base = found["captioner"], cfg.decoding.model_dump()
            if judge is None:
                judge_spec, cal = found["judge"], found["calibration"]
    if judge is not None:
        judge_spec, cal_file = _judge_spec(judge, source, calibration)
        cal = read_calibration(cal_file) if cal_file and judge_spec.backend == "clip" else None
    try:
        settings = CaptionerConfig.model_validate({**base, **(decoding or {})})
    except ValueError as err:
        raise ConfigError(f"decoding settings {decoding}: {err}") from None
    check_captioner(spec, settings, "--checkpoint" if source.checkpoint else f"stages.{source.stage}.captioner")
    ids = {"captioner": weights_id(spec.weights, spec.name)}
    if judge_spec is not None:
        judge_spec.check("--judge")
        ids["judge"] = weights_id(judge_spec.files, judge_spec.name)
        check_distinct(ids["captioner"], ids["judge"], spec.weights, judge_spec.files)
    return CaptionModels(spec, settings, judge_spec, cal, ids, source.describe())


def caption_files(models: CaptionModels, paths: list[str], max_pixels: int | None = None,
                  device: str | None = None) -> Iterator[dict]:
    """One row per file, in order: its captions (and with a judge, each caption's score and P(match)), or why it
    has none. Models load once; images go through in batches of `decoding.batch_size`."""
    from filtering.capfilt import CaptionAndJudge, decoding_record
    from filtering.captioner import Captioner
    from filtering.preprocess import Preprocessor
    from pipeline.core.images import DEFAULT_MAX_PIXELS, decode_image

    dec = models.decoding.model_dump()
    device = device or dec["device"]
    if models.judge is not None:
        run = CaptionAndJudge(models.captioner.model_dump(), dec, models.judge.model_dump(), models.calibration,
                              device)
    else:
        run = Captioner(models.captioner, {**dec, "device": device})
    crop = Preprocessor(models.captioner.preprocess_cfg())
    judge_pre = models.judge.preprocess_cfg() if models.judge is not None else None
    judge_crop = Preprocessor(judge_pre) if judge_pre and judge_pre != crop.cfg else None
    common = {"decoding": json.loads(decoding_record(dec)), **{f"{k}_id": v for k, v in models.ids.items()}}
    pending: list[tuple | dict] = []  # in the order given: images to caption, and rows of files that did not decode
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            pending.append({"path": path, "captions": [], "reason": f"unreadable: {type(err).__name__}: {err}"})
            continue
        info, image = decode_image(data, max_pixels or DEFAULT_MAX_PIXELS)
        if image is None:
            pending.append({"path": path, "captions": [], "reason": f"undecodable: {info.decode_error}"})
            continue
        pending.append((path, hashlib.sha256(data).hexdigest()[:32], crop(image),
                        judge_crop(image) if judge_crop else None))
        if sum(isinstance(p, tuple) for p in pending) == models.decoding.batch_size:
            yield from _flush(run, pending, common)
            pending = []
    yield from _flush(run, pending, common)


def _flush(run, pending: list[tuple | dict], common: dict) -> Iterator[dict]:
    """The rows of `pending` in order: its images captioned as one batch."""
    images = [p for p in pending if isinstance(p, tuple)]
    captioned = _caption_batch(run, images) if images else iter(())
    for p in pending:
        yield {**(next(captioned) if isinstance(p, tuple) else p), **common}


def _caption_batch(run, batch: list[tuple]) -> Iterator[dict]:
    n = len(batch)
    cols = {"pixels": np.stack([b[2] for b in batch]), "uid": np.array([b[1] for b in batch], dtype=object),
            "decodable": np.ones(n, dtype=bool), "held_out": np.zeros(n, dtype=bool),
            "caption": np.array([""] * n, dtype=object)}  # no web caption: only the synthetic ones are judged
    if batch[0][3] is not None:
        cols["judge_pixels"] = np.stack([b[3] for b in batch])
    out = run(cols)
    for i, (path, *_rest) in enumerate(batch):
        row = {"path": path, "captions": list(out["synthetic_captions"][i])}
        if "synthetic_scores" in out:
            probs = [None if p != p else round(float(p), 6) for p in out["synthetic_probabilities"][i]]
            row |= {"scores": [round(float(s), 6) for s in out["synthetic_scores"][i]], "probabilities": probs}
        yield row
