"""Test data for the CapFilt and filter-check tests: a small synthetic web written straight to shards (no server,
no download), its ground truth, and the truth's verdict on a caption.

`web_shards` builds the web on disk (`pipeline.synthetic.web.build_web`, no URL faults) and writes its pool and
high-quality URLs as winnow datasets `pool` and `hq` (tar + done marker, like the download stage: `<key>.jpg`,
`<key>.txt`, `<key>.json` with uid and url), so a test gets the synthetic web's images, captions and noise with
`truth.parquet` beside them in a second instead of a download stage's run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from built_once import built_once
from curation_testdata import TINY_MODEL, tiny_model_files

from pipeline.core.layout import Dataset, file_record
from pipeline.core.shards import write_tar
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.stages import train_clip
from pipeline.stages.context import StageContext
from pipeline.synthetic.config import FaultRates, SyntheticWebConfig
from pipeline.synthetic.web import build_web

CLEAN = ("none", "exact_duplicate", "near_duplicate")  # the caption describes the served image
GREEDY = {"strategy": "greedy", "max_length": 5, "min_length": 5}  # fast on a random captioner
STEPS, EVERY = 80, 20  # the trained filter's steps, and its evaluation (and checkpoint) interval


def web_shards(root: str, world: str = "shapes", pool: int = 600, hq: int = 600, seed: int = 0,
               per_shard: int = 300, **noise) -> dict:
    """Build the web under `root/web` and write datasets `pool` and `hq`; returns paths and the truth DataFrame."""
    no_faults = FaultRates(**dict.fromkeys(FaultRates.model_fields, 0.0))
    cfg = SyntheticWebConfig(world=world, seed=seed, pool_size=pool, hq_size=hq, test_size=60, faults=no_faults,
                             **({"noise": noise} if noise else {}))
    web_dir = os.path.join(root, "web")
    build_web(cfg, web_dir)
    truth = pd.read_parquet(os.path.join(web_dir, "truth.parquet"))
    out = {"root": root, "web": web_dir, "truth": truth, "world": world}
    for split in ("pool", "hq"):
        rows = truth[truth["split"] == split].reset_index(drop=True)
        ds = Dataset(root, split)
        tars = []
        for start in range(0, len(rows), per_shard):
            shard = f"{start // per_shard:05d}"
            samples = []
            for i, r in rows.iloc[start:start + per_shard].iterrows():
                with open(os.path.join(web_dir, r["path"]), "rb") as f:
                    image = f.read()
                meta = {"uid": r["uid"], "url": r["url"], "caption": r["caption"]}
                samples.append((f"{i:09d}", {r["path"].rsplit(".", 1)[1]: image, "txt": r["caption"].encode(),
                                             "json": json.dumps(meta).encode()}))
            write_tar(ds.shard_file(shard, "tar"), samples)
            ds.write_marker(shard, {"samples": len(samples), "ok": len(samples), "reasons": {},
                                    "files": {f"shards/{shard}.tar": file_record(ds.fs, ds.shard_file(shard, "tar"))}})
            tars.append(ds.shard_file(shard, "tar"))
        out[split] = tars
    return out


@pytest.fixture(scope="session")
def trained_filter(tmp_path_factory):
    """A tiny CLIP (the bootstraps' filter model) trained on the web's hq set with 20% held out, its checkpoints
    kept at every evaluation step."""
    return built_once(tmp_path_factory, "trained_filter", _train_filter)


def _train_filter(folder: Path):
    root = str(folder)
    web = web_shards(root, pool=500, hq=600, mismatched_caption=0.3, generic_caption=0.1, junk_image=0.1)
    stage = {"kind": "train-clip", "input": "hq", "model": {"name": "tiny-clip-rn"}, "objective": "clip",
             "steps": STEPS, "optim": {"lr": 2e-3, "warmup_steps": 10}, "log_every": 10,
             "checkpoint_every": EVERY, "keep_checkpoints": 10,
             "data": {"batch_size": 32, "loader_workers": 0, "shuffle_buffer": 128},
             "scaling": {"num_workers": 0, "torch_threads": 1}, "eval": {"synthetic_test": False},
             "holdout": {"fraction": 0.2, "seed": 3, "every_steps": EVERY, "junk_images": True}}
    cfg = parse_pipeline_config({"root": root, "stages": {"train_filter": stage}}, "t.yaml")
    result = train_clip.run(StageContext(pipeline=cfg, stage="train_filter"), cfg.stages["train_filter"])
    return web, result, os.path.join(root, "train_filter")


def tiny_coca(path: Path, seed: int = 0) -> str:
    import open_clip
    from safetensors.torch import save_file

    from pipeline.core.model_configs import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("tiny-coca")
    torch.nn.init.normal_(model.text_decoder.text_projection, std=64 ** -0.5)  # open_clip leaves it uninitialised
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def capfilt_models(tmp_path_factory):
    """A random tiny CoCa captioner, two tiny CLIPs (one the judge) and a calibration file for the judge."""
    d = tmp_path_factory.mktemp("capfilt_models")
    cfg, clip = tiny_model_files(d)
    calibration = d / "holdout.json"
    calibration.write_text(json.dumps({"estimated_auroc": 0.9, "platt": {"a": 40.0, "b": 0.0}}))
    return {"coca": tiny_coca(d / "coca.safetensors"), "clip": clip, "clip_config": cfg,
            "other_clip": tiny_model_files(d, seed=1)[1], "calibration": str(calibration)}


BLIP_WORDS = ["a", "picture", "of", "dog", "cat", "red", "blue", "on", "the", "grass", "table", "small", "big"]


def tiny_blip(d: Path) -> dict[str, str]:
    """Folders holding a tiny random BlipForConditionalGeneration ("caption") and BlipForImageTextRetrieval ("itm"),
    each with its processor, as Hugging Face's `save_pretrained` writes them (the tokenizer built from a local
    vocabulary: nothing is downloaded). Needs transformers."""
    import transformers

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *BLIP_WORDS]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")
    proc = transformers.BlipProcessor(transformers.BlipImageProcessor(size={"height": 32, "width": 32}), tok)
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=64,
                bos_token_id=vocab.index("[DEC]"), sep_token_id=vocab.index("[SEP]"), pad_token_id=0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    cfg = transformers.BlipConfig(text_config=text, vision_config=vision, projection_dim=16)
    out = {}
    for name, cls in (("caption", transformers.BlipForConditionalGeneration),
                      ("itm", transformers.BlipForImageTextRetrieval)):
        torch.manual_seed(0)
        cls(cfg).save_pretrained(d / name)
        proc.save_pretrained(d / name)
        out[name] = str(d / name)
    return out


def stage_cfg(models: dict, **extra) -> dict:
    """A caption stage over dataset `pool` with the `capfilt_models`."""
    return {"input": "pool", "captioner": {"name": "tiny-coca", "weights": models["coca"]}, "decoding": GREEDY,
            "caption_filter": {"name": TINY_MODEL, "weights": models["clip"], "config_file": models["clip_config"]},
            "calibration": models["calibration"], "batch_size": 8, "chunk_rows": 6, **extra}


def captioned_pool(root: str, rows: list[tuple[str, str | None, str | None, list[str]]], world: str = "shapes"):
    """A run root with a synthetic web's truth (`web/web.json`, `web/truth.parquet`: uid -> colour, shape) and a
    dataset `pool` whose caption stage wrote `rows` (uid, colour, shape, synthetic captions; None shape: a junk
    image), one shard, with its done marker; returns the pipeline config (synthetic web at `root/web`) and the
    dataset."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.stages.caption import FOLDER, write_caption_shard

    web = Path(root, "web")
    web.mkdir(parents=True, exist_ok=True)
    (web / "web.json").write_text(json.dumps({"world": world}))
    pq.write_table(pa.table({"uid": [r[0] for r in rows], "colour": [r[1] for r in rows],
                             "shape": [r[2] for r in rows]}), web / "truth.parquet")
    ds = Dataset(root, "pool")
    n = len(rows)

    def obj(values):
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    cols = {"uid": obj([r[0] for r in rows]), "key": obj([f"{i:09d}" for i in range(n)]),
            "shard": obj(["00000"] * n), "caption": obj(["a web caption"] * n), "decodable": np.ones(n, bool),
            "reason": obj([""] * n), "synthetic_captions": obj([list(r[3]) for r in rows]),
            "web_score": np.zeros(n, np.float32), "web_probability": np.full(n, 0.5, np.float32),
            "synthetic_scores": obj([[0.1] * len(r[3]) for r in rows]),
            "synthetic_probabilities": obj([[0.5] * len(r[3]) for r in rows])}
    ident = {"captioner_id": "sha256:coca", "judge_id": "sha256:clip", "decoding": "{}", "key": "k",
             "calibrated": True, "input_sha": {}}
    ds.write_marker("00000", write_caption_shard(ds, "00000", cols, {}, ident), FOLDER)
    signals = Path(ds.shard_file("00000", "parquet", "signals"))  # as a score stage with no model writes them
    signals.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: [str(v) for v in cols[k]] for k in ("uid", "shard", "key", "caption")} | {
        "decodable": [True] * n, "decode_error": pa.array([None] * n, pa.string())}), signals)
    ds.write_marker("00000", {"samples": n, "ok": n}, "signals")
    cfg = parse_pipeline_config({"root": str(root), "synthetic": {"world": world}, "stages": {
        "caption": {"kind": "caption", "input": "pool", "captioner": {"name": "tiny-coca", "weights": "x.pt"},
                    "caption_filter": {"name": "tiny-clip-rn", "weights": "y.pt"}}}}, "t.yaml")
    return cfg, ds
