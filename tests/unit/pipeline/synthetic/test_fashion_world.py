"""The fashion world: real grey photos (the committed Fashion-MNIST extract) served as a web like the rendered ones.

The extract, tests/data/fashion_small.npz (30 train + 10 test photos per class), is what CI has: the Debian package
is not installed there. `python -m pipeline.synthetic.fashion_fixture` rewrites it from the package.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.synthetic import fashion
from pipeline.synthetic.config import SyntheticWebConfig
from pipeline.synthetic.web import build_web, web_hash
from pipeline.synthetic.worlds import get_world

FIXTURE = str(Path(__file__).resolve().parents[3] / "data" / "fashion_small.npz")
CLEAN = ("none", "exact_duplicate", "near_duplicate")
COLOUR_WORDS = {"red", "green", "blue", "yellow", "purple", "orange", "pink", "brown"}


def fashion_config(**overrides) -> SyntheticWebConfig:
    base = dict(world="fashion", fashion_data=FIXTURE, seed=5, pool_size=200, hq_size=60, test_size=100,
                oversized_pixels=1_000_000)
    return SyntheticWebConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """(config, out_dir, web.json, truth DataFrame, test samples [(label, meta, RGB array)])."""
    import pandas as pd

    cfg = fashion_config()
    out = tmp_path_factory.mktemp("fashion_web")
    info = build_web(cfg, str(out))
    tests = []
    with tarfile.open(out / "test" / "00000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for name in sorted(n for n in members if n.endswith(".json")):
        key = name[:-5]
        meta = json.loads(members[name])
        tests.append((meta["label"], meta, np.asarray(Image.open(io.BytesIO(members[f"{key}.jpg"])).convert("RGB"))))
    return cfg, out, info, pd.read_parquet(out / "truth.parquet"), tests


def served(out: Path, row) -> np.ndarray:
    return np.asarray(Image.open(out / row.path).convert("RGB"))


def small_grey(rgb: np.ndarray) -> np.ndarray:
    """Back to the photos' own 28 x 28 grey, as a float vector."""
    return np.asarray(Image.fromarray(rgb).convert("L").resize((28, 28), Image.BILINEAR), np.float32).ravel() / 255


def named_classes(caption: str) -> list[str]:
    """The class names a caption says, as whole words ("shirt" is not found inside "t-shirt")."""
    return [c for c in fashion.CLASSES if re.search(rf"(?<![\w-]){re.escape(c)}(?![\w-])", caption.lower())]


def test_the_web_serves_grey_photos_whose_classes_a_nearest_centroid_probe_separates(web):
    """Trained on the served clean pairs (pool + hq), judged on the served test set: far above chance (10%)."""
    _, out, info, truth, tests = web
    assert info["world"] == "fashion" and info["classnames"] == list(fashion.CLASSES)
    clean = truth[truth["clean"] & truth["noise"].isin(["none", "near_duplicate"])]
    x = np.stack([small_grey(served(out, r)) for r in clean.itertuples()])
    y = np.array([fashion.CLASSES.index(c) for c in clean["classname"]])
    centroids = np.stack([x[y == c].mean(0) for c in range(10)])
    xt = np.stack([small_grey(img) for _, _, img in tests])
    yt = np.array([label for label, _, _ in tests])
    accuracy = float((((xt[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == yt).mean())
    assert accuracy > 0.45, accuracy
    sample = served(out, clean.iloc[0]).astype(int)
    assert np.abs(sample - sample[..., :1]).max() <= 3  # grey, encoded as RGB (JPEG leaves a level or two)
    assert sample.shape[0] == sample.shape[1] and 48 <= sample.shape[0] <= 128  # upscaled from 28, square
    assert sorted(yt.tolist()) == sorted(list(range(10)) * 10)  # balanced


def test_clean_captions_name_their_class_colour_free_and_the_noise_matches_the_config(web):
    cfg, _, info, truth, tests = web
    pool = truth[truth["split"] == "pool"]
    for kind, rate in cfg.noise.model_dump().items():
        assert abs((pool["noise"] == kind).mean() - rate) <= 1 / cfg.pool_size, kind
    assert info["counts"]["noise"]["mismatched_caption"] == round(cfg.noise.mismatched_caption * cfg.pool_size)
    clean = truth[truth["noise"].isin(CLEAN)]
    assert len(clean) > 150
    for row in clean.itertuples():
        assert named_classes(row.caption) == [row.classname], row.caption
        assert not COLOUR_WORDS & set(row.caption.lower().split()), row.caption
    mismatched = pool[pool["noise"] == "mismatched_caption"]
    assert all(named_classes(r.caption) not in ([r.classname], []) for r in mismatched.itertuples())
    assert len(set(clean["caption"])) >= 40  # several templates per class
    assert all(named_classes(meta["caption"]) == [fashion.CLASSES[label]] for label, meta, _ in tests)
    with open(Path(web[1]) / "test" / "classnames.json") as f:
        assert json.load(f)["templates"] == list(fashion.FASHION_CLASS_TEMPLATES)


def test_the_test_split_never_leaks_into_the_pool_or_the_clean_set(web):
    _, _, _, truth, tests = web
    data = fashion.load(FIXTURE)
    served_sources = truth["source"].dropna()
    assert len(served_sources) > 200 and served_sources.str.startswith("train:").all()
    assert all(meta["source"].startswith("test:") for _, meta, _ in tests)
    own = truth[truth["noise"].isin(["none", "generic_caption", "mismatched_caption", "tiny_image"])]
    assert own["source"].is_unique  # each photo once; only planted duplicates repeat one
    train_pixels = {data.train_images[int(s.split(":")[1])].tobytes() for s in served_sources}
    test_pixels = {data.test_images[int(meta["source"].split(":")[1])].tobytes() for _, meta, _ in tests}
    assert len(test_pixels) == 100 and not train_pixels & test_pixels


def test_duplicates_and_tiny_images_are_the_same_photo(web):
    _, out, _, truth, _ = web
    by_uid = truth.set_index("uid")
    for row in truth[truth["noise"].isin(["exact_duplicate", "near_duplicate"]) & truth["path"].notna()].itertuples():
        assert row.source == by_uid.loc[row.duplicate_of, "source"]
    tiny = truth[(truth["noise"] == "tiny_image") & truth["width"].notna()]
    assert len(tiny) and (tiny["width"] <= 16).all()


def test_missing_photos_say_how_to_get_them_and_sizes_beyond_the_extract_are_refused(tmp_path):
    with pytest.raises(fashion.FashionDataMissing, match="make fashion-data"):
        build_web(fashion_config(fashion_data=str(tmp_path / "nowhere")), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="pool_size \\+ hq_size"):
        build_web(fashion_config(pool_size=280, hq_size=40), str(tmp_path / "b"))
    with pytest.raises(ValueError, match="lower test_size"):
        build_web(fashion_config(test_size=110), str(tmp_path / "c"))


def test_the_source_is_part_of_the_hash_and_the_environment_points_at_it(monkeypatch, tmp_path):
    assert web_hash(fashion_config()) != web_hash(fashion_config(fashion_data=str(tmp_path / "other.npz")))
    monkeypatch.setenv(fashion.ENV, FIXTURE)
    assert get_world("fashion").source == FIXTURE
    assert web_hash(fashion_config(fashion_data=None)) == web_hash(fashion_config())
    monkeypatch.delenv(fashion.ENV)
    assert get_world("fashion").source == fashion.DEFAULT_DIR


def test_a_pipeline_config_takes_the_fashion_world():
    from pipeline.pipeline_config import parse_pipeline_config

    cfg = parse_pipeline_config({"root": "/tmp/r", "synthetic": {"world": "fashion", "fashion_data": FIXTURE},
                                 "stages": {}}, "t.yaml")
    assert cfg.synthetic.world == "fashion" and cfg.synthetic.fashion_data == FIXTURE


def test_a_benchs_labelled_training_set_comes_from_the_train_split_and_its_test_set_from_the_test_split():
    from pipeline.synthetic.testset import labelled_samples

    world = get_world("fashion", FIXTURE)
    train = labelled_samples(0, 100, 32, 32, world, "train")
    test = labelled_samples(0, 100, 32, 32, world)
    origins = {s["scene"].origin for s in train}
    assert len(origins) == 100 and all(o.startswith("train:") for o in origins)
    assert {s["scene"].origin.split(":")[0] for s in test} == {"test"}
    assert all(fashion.CLASSES[s["label"]] == s["scene"].classname for s in train + test)


def test_the_same_config_builds_the_same_bytes(web, tmp_path):
    import pandas as pd

    cfg, out, _, truth, _ = web
    build_web(cfg, str(tmp_path))
    again = pd.read_parquet(tmp_path / "truth.parquet")
    assert again.equals(truth)
    assert (tmp_path / "test" / "00000.tar").read_bytes() == (Path(out) / "test" / "00000.tar").read_bytes()
