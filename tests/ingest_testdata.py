"""Sources an ingest reads, as users hold them: DataComp-style webdataset shards (uid in each JSON, a parquet beside
each tar, as img2dataset writes them), a COCO-style image folder with a captions JSON, and a parquet file with image
bytes in datasets' Image struct."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_datacomp_shards(folder: Path, shards: list[list[dict]], link_in: int | None = None,
                          uid_in_json: bool = True) -> list[Path]:
    """`{shard:08d}.tar` + `.parquet` per list of samples ({"image", "caption", "url", "uid"}: None = absent),
    keys `{shard:08d}{i:04d}` as DataComp's are. The parquet also lists one failed download (not in the tar), as
    img2dataset's does. `link_in`: that shard's first image member is a symlink instead (refused by readers)."""
    folder.mkdir(parents=True, exist_ok=True)
    tars = []
    for s, samples in enumerate(shards):
        tar = folder / f"{s:08d}.tar"
        rows = []
        with tarfile.open(tar, "w") as tf:
            for i, smp in enumerate(samples):
                key = f"{s:08d}{i:04d}"
                meta = {"key": key, "url": smp.get("url"), "caption": smp.get("caption"), "status": "success",
                        "original_width": 640, "clip_b32_similarity_score": 0.25 + i / 1000}
                if uid_in_json and smp.get("uid"):
                    meta["uid"] = smp["uid"]
                members = {"json": json.dumps(meta).encode()}
                if smp.get("caption") is not None:
                    members["txt"] = smp["caption"].encode()
                if smp.get("image") is not None:
                    members["jpg"] = smp["image"]
                for ext in sorted(members):
                    if ext == "jpg" and link_in == s and i == 0:
                        link = tarfile.TarInfo(f"{key}.jpg")
                        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                        tf.addfile(link)
                        continue
                    _add(tf, f"{key}.{ext}", members[ext])
                rows.append({"key": key, "uid": smp.get("uid"), "url": smp.get("url"), "text": smp.get("caption"),
                             "status": "success", "face_bboxes": json.dumps([[0.1, 0.1, 0.2, 0.2]])})
        rows.append({"key": f"{s:08d}9999", "uid": "f" * 32, "url": "http://gone.test/x.jpg", "text": "gone",
                     "status": "failed_to_download", "face_bboxes": None})
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{s:08d}.parquet")
        tars.append(tar)
    return tars


def write_coco_folder(folder: Path, images: dict[str, bytes], captions: dict[str, list[str]]) -> Path:
    """Images under `folder/train/` and `folder/captions.json` in COCO's captions format (ids, file names, one
    annotation per caption); returns the captions file."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    entries, annotations = [], []
    for i, (name, data) in enumerate(sorted(images.items())):
        (folder / "train" / name).write_bytes(data)
        entries.append({"id": i + 1, "file_name": name, "license": 3, "height": 48, "width": 64})
        for text in captions.get(name, []):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "caption": text})
    path = folder / "captions.json"
    path.write_text(json.dumps({"info": {}, "images": entries, "annotations": annotations}))
    return path


def write_image_parquet(path: Path, rows: list[dict]) -> Path:
    """A parquet file like `datasets`' `to_parquet` of an Image + text dataset: `image` is {bytes, path}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{"image": {"bytes": r["image"], "path": r.get("name")}, "caption": r["caption"],
                                   "label": r.get("label", 0)} for r in rows])
    pq.write_table(table, path, row_group_size=4)
    return path
