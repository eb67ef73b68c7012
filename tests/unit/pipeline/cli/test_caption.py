"""`winnow caption` on the demo's captioner and filter (tiny, trained by their stages): one JSON line per image with
the caption stage's decoding settings and the judge's calibrated P(match); an undecodable file is a line with its
reason; an image gets the same captions whatever it is called and whatever is captioned with it; a checkpoint path
(a train-clip output, a Hugging Face BLIP folder) instead of a stage."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from curation_testdata import jpeg, smooth_image

from pipeline.__main__ import main


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for i in range(3):
        (d / f"img{i}.jpg").write_bytes(jpeg(smooth_image(i, (48, 40))))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "page.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")  # PostScript named .jpg: never decoded
    (d / "notes.txt").write_text("not an image")  # not an image file name: --images passes it over
    return d


def caption(*argv: str, out: Path) -> list[dict]:
    assert main(["caption", *argv, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_the_stage_captions_images_with_its_decoding_and_the_judges_probability(demo_models, photos, tmp_path):
    rows = caption(demo_models["config"], "--stage", "caption", "--images", str(photos), out=tmp_path / "c.jsonl")
    by_name = {Path(r["path"]).name: r for r in rows}
    assert [Path(r["path"]).name for r in rows] == ["broken.jpg", "img0.jpg", "img1.jpg", "img2.jpg", "page.jpg"]
    assert by_name["broken.jpg"]["captions"] == [] and by_name["broken.jpg"]["reason"].startswith("undecodable:")
    assert "RefusedFormat: PostScript" in by_name["page.jpg"]["reason"]
    for name in ("img0.jpg", "img1.jpg", "img2.jpg"):
        row = by_name[name]
        assert len(row["captions"]) == 2 and all(1 <= len(c.split()) for c in row["captions"])
        assert row["decoding"]["strategy"] == "nucleus" and row["decoding"]["num_captions"] == 2  # the stage's
        assert len(row["scores"]) == 2 and all(-1 <= s <= 1 for s in row["scores"])
        assert all(0 <= p <= 1 for p in row["probabilities"])  # calibrated by train_filter's holdout.json
        assert row["captioner_id"].startswith("sha256:") and row["judge_id"] != row["captioner_id"]

    # the same image under another name, captioned alone and in another batch: the same captions
    shutil.copy(photos / "img1.jpg", tmp_path / "copy.jpg")
    alone = caption(demo_models["config"], "--stage", "caption", str(tmp_path / "copy.jpg"), out=tmp_path / "a.jsonl")
    assert alone[0]["captions"] == by_name["img1.jpg"]["captions"]
    assert alone[0]["probabilities"] == pytest.approx(by_name["img1.jpg"]["probabilities"], abs=1e-5)

    greedy = caption(demo_models["config"], "--stage", "caption", str(photos / "img0.jpg"), "--strategy", "greedy",
                     "--num-captions", "1", "--decoding", "max_length=4", out=tmp_path / "g.jsonl")
    assert greedy[0]["decoding"]["strategy"] == "greedy" and greedy[0]["decoding"]["max_length"] == 4
    assert len(greedy[0]["captions"]) == 1 and len(greedy[0]["captions"][0].split()) <= 4


def test_a_train_clip_output_and_a_judge_path_instead_of_stages(demo_models, photos, tmp_path):
    root = demo_models["root"]
    rows = caption("--checkpoint", str(root / "train_captioner"), "--judge", str(root / "train_filter"),
                   str(photos / "img0.jpg"), "--num-captions", "1", out=tmp_path / "c.jsonl")
    assert len(rows[0]["captions"]) == 1 and 0 <= rows[0]["probabilities"][0] <= 1  # holdout.json beside model.pt
    bare = caption("--checkpoint", str(root / "train_captioner" / "model.pt"), str(photos / "img0.jpg"),
                   "--num-captions", "1", out=tmp_path / "b.jsonl")
    assert "scores" not in bare[0] and bare[0]["captions"] == rows[0]["captions"]  # no judge: captions alone
    staged = caption(demo_models["config"], "--stage", "train_captioner", str(photos / "img0.jpg"), "--judge",
                     "train_filter", "--num-captions", "1", out=tmp_path / "s.jsonl")  # the same models, by stage
    assert staged[0]["captions"] == rows[0]["captions"]
    assert staged[0]["probabilities"] == pytest.approx(rows[0]["probabilities"], abs=1e-6)


def test_a_hugging_face_blip_folder_captions_and_its_itm_judges(tmp_path, photos):
    pytest.importorskip("transformers")
    from capfilt_testdata import BLIP_WORDS, tiny_blip

    blip = tiny_blip(tmp_path)
    rows = caption("--checkpoint", blip["caption"], "--judge", blip["itm"], str(photos / "img0.jpg"),
                   str(photos / "img2.jpg"), "--strategy", "greedy", "--decoding", "min_length=2",
                   "--decoding", "max_length=5", out=tmp_path / "c.jsonl")
    assert [len(r["captions"]) for r in rows] == [1, 1]
    assert all(w in BLIP_WORDS for r in rows for w in r["captions"][0].split())
    assert all(0 <= r["probabilities"][0] <= 1 for r in rows) and rows[0]["scores"] == rows[0]["probabilities"]


def test_bad_caption_arguments_are_one_clear_error(demo_models, photos, tmp_path, capsys):
    cfg, root = demo_models["config"], demo_models["root"]
    img = str(photos / "img0.jpg")
    cases = [
        (["caption", cfg, "--stage", "train_filter", img], r"trains objective 'clip'; a captioner is a CoCa"),
        (["caption", cfg, "--stage", "generator", img], r"a train-diffusion stage; caption names a caption or "
                                                        r"train-clip stage \(here: train_filter, train_captioner, "
                                                        r"caption\)"),
        (["caption", cfg, "--stage", "caption"], r"no image: give image files, or --images DIR"),
        (["caption", "--checkpoint", str(root / "generator"), img],
         r"--checkpoint: .*generator is a winnow generator .*, not a winnow encoder"),
        (["caption", "--checkpoint", str(root / "train_captioner"), "--judge", str(root / "train_captioner"), img],
         r"must be a different model from the captioner"),
        (["caption", cfg, "--stage", "caption", img, "--decoding", "top_p"], r"--decoding 'top_p': expected KEY="),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "x.jsonl")]) in (1, 2)
        err = capsys.readouterr().err
        assert re.search(message, err), err
