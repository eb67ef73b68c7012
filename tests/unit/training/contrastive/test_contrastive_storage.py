"""The contrastive task on remote storage (an S3 server on loopback): shards streamed from the bucket, an
in-process run writing to it and resuming there, pretrained weights read from it."""

from __future__ import annotations

import io
import os
import tarfile

import torch
from test_contrastive_objectives import tiny_run, train_contrastive

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import upload
from training.contrastive.config import ModelConfig
from training.contrastive.data import ErrorCounter, tar_samples
from training.contrastive.models import build_model
from training.engine import checkpoint as ckpt


def keys_under(url: str) -> list[str]:
    fs, base = fs_and_path(url)
    return sorted(p[len(base) + 1:] for p in fs.find(base))


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_shards_stream_from_the_bucket_and_a_missing_one_is_counted(s3_bucket):
    fs, base = fs_and_path(join(s3_bucket, "curated"))
    fs.pipe_file(f"{base}/00000.tar", tar_bytes({"a.txt": b"one", "a.jpg": b"x", "b.txt": b"two"}))
    errors = ErrorCounter()
    urls = [join(s3_bucket, "curated", "00000.tar"), join(s3_bucket, "curated", "00001.tar")]
    samples = list(tar_samples(urls, errors))
    assert [(s["__key__"], s["txt"]) for s in samples] == [("a", b"one"), ("b", b"two")]
    assert errors.count == 1  # 00001.tar does not exist: counted, not raised


def test_an_in_process_run_on_s3_trains_from_the_bucket_and_a_rerun_resumes_there(shapes, s3_bucket):
    shards = []
    for path in shapes["pool"][:2]:
        shards.append(join(s3_bucket, "curated", os.path.basename(path)))
        upload(path, shards[-1])
    out = join(s3_bucket, "train")
    first = tiny_run("siglip", "tiny-sigmoid-vit", {}, steps=6, checkpoint_every=3)
    result = train_contrastive(first, shards, out)
    assert result["step"] == 6 and result["weights"] == join(out, "model.pt")
    assert result["last_checkpoint"] == join(out, "checkpoints", ckpt.step_dir_name(6))
    result = train_contrastive(first.model_copy(update={"steps": 9}), shards, out)  # the same command, more steps
    assert result["step"] == 9 and result["resumed_from"] == [6]
    files = keys_under(out)
    assert {"model.pt", "eval.json", "metrics.csv", "resumes.json", "curves.png"} <= set(files)
    assert ckpt.step_dirs(join(out, "checkpoints")) == [ckpt.step_dir_name(6), ckpt.step_dir_name(9)]
    fs, base = fs_and_path(join(out, "metrics.csv"))
    assert [line.split(",")[0] for line in fs.cat_file(base).decode().splitlines()[1:]] == ["5", "6", "9"]


def test_a_run_starts_from_pretrained_weights_in_the_bucket(s3_bucket, tmp_path):
    torch.manual_seed(3)
    source = build_model(ModelConfig(name="tiny-clip-vit"), "clip").clip
    ckpt.save_weights(str(tmp_path / "model.pt"), source)
    url = join(s3_bucket, "filter-net", "model.pt")
    upload(str(tmp_path / "model.pt"), url)
    torch.manual_seed(4)  # a different random init: equal weights can only come from the file
    built = build_model(ModelConfig(name="tiny-clip-vit", pretrained=url), "clip").clip
    for name, tensor in source.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor), name
