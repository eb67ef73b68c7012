"""Test data for the curation tests: download-stage-shaped shards, hand-made signals and a tiny open_clip model.

Shards mimic the download stage's output (img2dataset's webdataset writer): `shards/00000.tar` with `<key>.jpg`,
`<key>.txt`, `<key>.json`, `shards/00000.parquet` (one row per sample) and a `shards/_done/00000` marker holding
the files' checksums. Images are smooth colour fields (an 8x8 random grid upsampled), so perceptual hashes behave
as on photos: a re-encoded copy hashes within a few bits, a different image far away.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core.ids import uid_of
from pipeline.core.layout import Dataset, file_record

TINY_MODEL = "tiny-curation-clip"
TINY_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def smooth_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    grid = (rng.random((6, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(grid).resize(size, Image.BICUBIC)


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Sample:
    image: bytes | None  # None: a sample without an image member
    caption: str
    url: str

    @property
    def uid(self) -> str:
        return uid_of(self.url)


def sample(i: int, caption: str | None = None, image: bytes | None = ..., size=(64, 48)) -> Sample:
    """The i-th distinct sample (its own image, caption and URL) unless overridden."""
    img = jpeg(smooth_image(i, size)) if image is ... else image
    return Sample(img, caption if caption is not None else f"a photo of object number {i} on a table",
                  f"http://web.test/img/{i}.jpg")


def write_pool(root: str | Path, name: str, shards: list[list[Sample]], done: bool = True) -> Dataset:
    """Write shards like the download stage does (tar + parquet + done marker with checksums)."""
    ds = Dataset(str(root), name)
    (Path(ds.path) / "shards").mkdir(parents=True, exist_ok=True)
    for s, samples in enumerate(shards):
        shard = f"{s:05d}"
        tar_path = Path(ds.path) / "shards" / f"{shard}.tar"
        rows = []
        with tarfile.open(tar_path, "w") as tf:
            for i, smp in enumerate(samples):
                key = f"{s:05d}{i:04d}"
                meta = {"uid": smp.uid, "url": smp.url, "caption": smp.caption, "key": key, "status": "success",
                        "error_message": None}
                members = {"txt": smp.caption.encode(), "json": json.dumps(meta).encode()}
                if smp.image is not None:
                    members["jpg"] = smp.image
                for ext in sorted(members):
                    _add(tf, f"{key}.{ext}", members[ext])
                rows.append({"uid": smp.uid, "key": key, "url": smp.url, "caption": smp.caption,
                             "status": "success", "error_message": None, "width": None, "height": None,
                             "sha256": None, "reason": None})
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"uid": pa.array([], pa.string())}),
                       Path(ds.path) / "shards" / f"{shard}.parquet")
        if done:
            mark(ds, shard, len(samples))
    return ds


def mark(ds: Dataset, shard: str, n: int) -> None:
    files = {f"shards/{shard}.{ext}": file_record(ds.fs, ds.shard_file(shard, ext)) for ext in ("tar", "parquet")}
    ds.write_marker(shard, {"samples": n, "ok": n, "reasons": {}, "files": files})


def _add(tf: tarfile.TarFile, name: str, data: bytes, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tf.addfile(info, io.BytesIO(data))


def add_hostile_members(tar_path: str | Path) -> dict[str, int]:
    """Append members that must never be extracted; returns the skip reasons the reader should count."""
    with tarfile.open(tar_path, "a") as tf:
        _add(tf, "../escape.txt", b"outside")
        _add(tf, "/tmp/absolute.txt", b"absolute")
        _add(tf, "a/../../up.jpg", b"up")
        link = tarfile.TarInfo("evil.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        hard = tarfile.TarInfo("hard.jpg")
        hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/shadow"
        tf.addfile(hard)
        dev = tarfile.TarInfo("dev.jpg")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(dev)
    return {"unsafe_name": 3, "link_member": 2, "device_member": 1}


def tiny_model_files(directory: str | Path, seed: int = 0) -> tuple[str, str]:
    """(model config JSON path, safetensors checkpoint path) of a tiny randomly initialised open_clip model."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg_path = directory / f"{TINY_MODEL}.json"
    ckpt = directory / f"{TINY_MODEL}-seed{seed}.safetensors"
    if not ckpt.exists():
        cfg_path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(cfg_path)
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_MODEL, pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return str(cfg_path), str(ckpt)


def open_clip_folder(directory: str | Path, name: str = "tiny-clip-rn", seed: int = 0) -> str:
    """A tiny randomly initialised open_clip model saved as open_clip writes a model for the hub
    (`open_clip.push_to_hf_hub.save_config_for_hf`: open_clip_config.json; the weights as
    open_clip_pytorch_model.bin), the folder a `local-dir:` name loads."""
    import open_clip
    import torch
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.push_to_hf_hub import save_config_for_hf

    from pipeline.core.model_configs import random_init_expected, register_model_configs

    register_model_configs()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with random_init_expected():
        model = open_clip.create_model(name)
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=open_clip.get_model_config(name))
    torch.save(model.state_dict(), folder / HF_WEIGHTS_NAME)  # what save_for_hf writes without safetensors
    return str(folder)


def small_pipeline(root: str | Path, synthetic: dict, eval_test_set: bool = True) -> dict:
    """A pipeline config body of download from the loopback web -> a 4-step tiny CLIP on the pool -> score with it:
    the shortest run of the chain that still trains and scores (tests add stages after `score`)."""
    train = {"kind": "train-clip", "input": "pool", "model": {"name": "tiny-clip-vit-s"}, "objective": "clip",
             "steps": 4, "checkpoint_every": 4, "log_every": 4,
             "data": {"batch_size": 16, "shuffle_buffer": 8, "loader_workers": 1}, "scaling": {"num_workers": 0}}
    if not eval_test_set:
        train["eval"] = {"synthetic_test": False}
    return {"root": str(root), "ray": {"num_cpus": 2, "object_store_mb": 512}, "synthetic": synthetic,
            "stages": {"download": {"source": "synthetic", "output": "pool", "image_size": 32,
                                    "resize_mode": "center_crop", "number_sample_per_shard": 80, "thread_count": 16,
                                    "timeout": 1},
                       "train_filter": train,
                       "score": {"input": "pool", "model_from": "train_filter", "batch_size": 32}}}
