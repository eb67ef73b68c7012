"""The filter stage on real score-stage output: planted noise dropped by the right op, funnel, recipe errors."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from curation_testdata import TINY_MODEL, Sample, jpeg, sample, smooth_image, tiny_model_files, write_pool

from filtering.ops import top_fraction_threshold
from filtering.recipe import RecipeError
from pipeline.core.config import ConfigError
from pipeline.pipeline_config import parse_pipeline_config
from pipeline.stages import filter as filter_stage
from pipeline.stages import score
from pipeline.stages.context import StageContext

CLEAN = 20


def planted_pool() -> tuple[list[list[Sample]], dict[str, str]]:
    """20 clean samples plus one of each kind of noise; returns shards and uid -> the op that must drop it."""
    clean = [sample(i) for i in range(CLEAN)]
    noise = {
        "exact": Sample(clean[0].image, "the same picture under another address", "http://web.test/copy0.jpg"),
        "near": Sample(jpeg(smooth_image(1), quality=55), "a re-encoded copy of picture one", "http://web.test/n1.jpg"),
        "tiny": sample(90, size=(16, 12)),
        "wide": sample(91, size=(200, 40)),
        "generic": sample(92, caption="IMG_2041.jpg"),
        "short": sample(93, caption="cat"),
        "broken": Sample(b"GIF89a broken", "a picture that does not decode", "http://web.test/broken.gif"),
    }
    expect = {noise["tiny"].uid: "min_image_side", noise["wide"].uid: "max_aspect_ratio",
              noise["generic"].uid: "drop_generic_captions", noise["short"].uid: "min_caption_words",
              noise["broken"].uid: "decodable"}
    samples = clean + list(noise.values())
    return [samples[:14], samples[14:]], expect | {"exact": noise["exact"].uid, "near": noise["near"].uid}


@pytest.fixture(scope="module")
def scored(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("filter_stage")
    shards, expect = planted_pool()
    write_pool(root, "pool", shards)
    cfg_path, ckpt = tiny_model_files(root / "model")
    model = {"name": TINY_MODEL, "pretrained": ckpt, "config_file": cfg_path}
    pc = parse_pipeline_config({"root": str(root), "stages": {"score": {"input": "pool", "model": model}}}, "t.yaml")
    score.run(StageContext(pipeline=pc, stage="score"), pc.stages["score"])
    return root, shards, expect


def run_filter(root, recipe: str, stage: str = "filter"):
    pc = parse_pipeline_config({"root": str(root), "stages": {stage: {"kind": "filter", "input": "pool",
                                                                      "recipe": recipe}}}, "t.yaml")
    return filter_stage.run(StageContext(pipeline=pc, stage=stage), pc.stages[stage])


def test_basic_recipe_drops_each_planted_sample_with_its_op(scored):
    root, shards, expect = scored
    res = run_filter(root, "basic")
    rows = {r["uid"]: r for r in pq.read_table(res["selection"]).to_pylist()}
    assert len(rows) == 27
    for uid, op in expect.items():
        if uid in ("exact", "near"):
            continue
        assert rows[uid]["drop_op"] == op, (op, rows[uid])
    clean0, clean1 = shards[0][0].uid, shards[0][1].uid
    # exactly one copy of each duplicate pair survives, and the dropped one names the kept one
    pair = [rows[clean0], rows[expect["exact"]]]
    assert sorted(r["kept"] for r in pair) == [False, True]
    dropped = next(r for r in pair if not r["kept"])
    assert dropped["drop_op"] == "dedup" and dropped["drop_detail"] == next(r for r in pair if r["kept"])["uid"]
    near = [rows[clean1], rows[expect["near"]]]
    assert sorted(r["kept"] for r in near) == [False, True]
    assert next(r for r in near if not r["kept"])["drop_value"] <= 4
    assert [(f["op"], f["left"]) for f in res["funnel"]] == [
        ("pool", 27), ("unique_uid", 27), ("decodable", 26), ("min_image_side", 25), ("max_aspect_ratio", 24),
        ("min_caption_words", 23), ("drop_generic_captions", 22), ("dedup", 21), ("dedup", 20)]
    assert res["kept"] == 20 == sum(r["kept"] for r in rows.values())
    m = (root / "pool" / "manifest.json").read_text()
    assert '"funnel"' in m and '"kept": 20' in m


def test_datacomp_top_fraction_matches_the_pool_threshold(scored):
    root, _, _ = scored
    res = run_filter(root, "datacomp_clip_score", stage="filter_clip")
    scores = np.concatenate([
        np.array([np.nan if v is None else v for v in pq.read_table(p).column("dfn_score").to_pylist()])
        for p in sorted((root / "pool" / "signals").glob("*.parquet"))])
    t = top_fraction_threshold(scores, 0.3)
    assert res["kept"] == int((scores >= t).sum()) >= int(0.3 * 26)
    assert res["funnel"][-1]["threshold"] == pytest.approx(t)
    info = filter_stage.read_selection_info(filter_stage.Dataset(str(root), "pool"))
    assert info["datacomp_clip_score"]["kept"] == res["kept"] and info["datacomp_clip_score"]["samples"] == 27


def test_semantic_dedup_on_stage_embeddings_finds_the_copies(scored, tmp_path):
    root, shards, expect = scored
    recipe = tmp_path / "semantic_only.yaml"
    # a random tiny model puts distinct images within ~0.997 of each other; copies are at ~1.0
    recipe.write_text("description: test\nops:\n  - dedup: {method: semantic, min_cosine: 0.9995}\n")
    res = run_filter(root, str(recipe), stage="filter_sem")
    rows = {r["uid"]: r for r in pq.read_table(res["selection"]).to_pylist()}
    dropped = {u for u, r in rows.items() if r["drop_op"] == "dedup"}
    assert len(dropped) == 2
    assert len(dropped & {shards[0][0].uid, expect["exact"]}) == 1
    assert len(dropped & {shards[0][1].uid, expect["near"]}) == 1


def test_recipe_needing_uncomputed_signals_fails_before_any_work(tmp_path):
    write_pool(tmp_path, "pool", [[sample(i) for i in range(3)]])
    stages = {"score": {"input": "pool", "model": None}, "filter": {"input": "pool", "recipe": "dfn"}}
    pc = parse_pipeline_config({"root": str(tmp_path), "stages": stages}, "p.yaml")
    with pytest.raises(RecipeError, match=r"dfn.yaml: ops\[6\] dedup: needs image embeddings .*model: null"):
        filter_stage.preflight(StageContext(pipeline=pc, stage="filter"), pc.stages["filter"])
    assert not os.path.exists(tmp_path / "pool" / "signals")  # nothing was scored: the check came first
    with pytest.raises(ConfigError, match="no scored shards"):
        filter_stage.run(StageContext(pipeline=pc, stage="filter"), pc.stages["filter"])


def test_unknown_op_in_a_recipe_is_a_config_error_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ops:\n  - min_image_side: 32\n  - clip_threshold: {min: 0.2}\n")
    with pytest.raises(ConfigError) as err:
        parse_pipeline_config({"root": str(tmp_path), "stages": {"filter": {"input": "pool", "recipe": str(bad)}}},
                              "p.yaml")
    msg = str(err.value)
    assert "bad.yaml: ops[1] clip_threshold: unknown op" in msg and "known ops: min_image_side" in msg


def test_unknown_recipe_name_is_a_config_error_at_load(tmp_path):
    with pytest.raises(ConfigError, match="recipe 'basicc': no such file.*recipes in configs/filters: .*basic"):
        parse_pipeline_config({"root": str(tmp_path), "stages": {"filter": {"input": "pool", "recipe": "basicc"}}},
                              "p.yaml")
