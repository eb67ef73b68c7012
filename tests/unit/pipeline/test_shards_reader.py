"""The safe tar reader: member bytes in memory only; unsafe members counted, never extracted or followed."""

from __future__ import annotations

import io
import os
import tarfile

import pytest
from curation_testdata import add_hostile_members, jpeg, sample, smooth_image, write_pool

from pipeline.core.shards import ReadReport, index_samples, read_ranges, read_samples, write_tar


def test_hostile_members_are_counted_and_never_written(tmp_path, monkeypatch):
    ds = write_pool(tmp_path / "root", "pool", [[sample(i) for i in range(3)]])
    tar = ds.shard_file("00000", "tar")
    expected = add_hostile_members(tar)
    work = tmp_path / "cwd" / "a"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # "../escape.txt" would land in tmp_path/cwd if anything extracted
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "cwd"))
    report = ReadReport()
    samples = list(read_samples(tar, report))
    assert [k for k, _ in samples] == ["000000000", "000000001", "000000002"]
    assert set(samples[0][1]) == {"jpg", "txt", "json"}
    assert dict(report.skipped) == expected and report.error is None
    assert (sorted(os.listdir(tmp_path)), sorted(os.listdir(tmp_path / "cwd"))) == before
    assert not os.path.exists("/tmp/absolute.txt") or open("/tmp/absolute.txt", "rb").read() != b"absolute"
    assert os.listdir(work) == []


def test_truncated_tar_keeps_samples_before_the_damage(tmp_path):
    ds = write_pool(tmp_path, "pool", [[sample(i) for i in range(6)]])
    path = ds.shard_file("00000", "tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * 0.6)])
    report = ReadReport()
    keys = [k for k, _ in read_samples(path, report)]
    assert 2 <= len(keys) < 6 and report.error
    assert report.samples == len(keys)


def test_garbage_file_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "junk.tar"
    path.write_bytes(b"this is not a tar archive at all" * 10)
    report = ReadReport()
    assert list(read_samples(str(path), report)) == []
    assert report.error


def test_repeated_keys_and_members_are_skipped(tmp_path):
    path = tmp_path / "r.tar"
    with tarfile.open(path, "w") as tf:
        for name, data in [("a.jpg", b"1"), ("a.txt", b"t"), ("a.txt", b"t2"), ("b.jpg", b"2"), ("a.json", b"{}"),
                           ("noext", b"x"), ("dir/c.jpg", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    report = ReadReport()
    samples = dict(read_samples(str(path), report))
    assert samples == {"a": {"jpg": b"1", "txt": b"t"}, "b": {"jpg": b"2"}, "dir/c": {"jpg": b"3"}}
    assert dict(report.skipped) == {"repeated_member": 1, "repeated_key": 1, "no_extension": 1}


def test_index_and_ranges_read_the_same_bytes_as_the_stream(tmp_path):
    ds = write_pool(tmp_path, "pool", [[sample(i) for i in range(4)]])
    tar = ds.shard_file("00000", "tar")
    add_hostile_members(tar)
    streamed = dict(read_samples(tar))
    index = index_samples(tar, keys={"000000001", "000000003", "evil"})
    assert set(index) == {"000000001", "000000003"}
    for key, members in index.items():
        exts = sorted(members)
        got = read_ranges(tar, [members[e] for e in exts])
        assert dict(zip(exts, got, strict=True)) == streamed[key]


def test_write_tar_is_deterministic_and_readable_by_webdataset(tmp_path):
    import webdataset as wds

    samples = [(f"k{i}", {"jpg": jpeg(smooth_image(i)), "txt": f"caption {i}".encode()}) for i in range(3)]
    a, b = str(tmp_path / "a.tar"), str(tmp_path / "b.tar")
    assert write_tar(a, samples) == 3 and write_tar(b, samples) == 3
    assert open(a, "rb").read() == open(b, "rb").read()
    got = [(s["__key__"], s["txt"]) for s in wds.WebDataset(a, shardshuffle=False)]
    assert got == [(f"k{i}", f"caption {i}".encode()) for i in range(3)]


def _tar_with(path, members, fmt=tarfile.GNU_FORMAT, mode="w"):
    """Write (name, bytes, pax_headers) members; return the path."""
    with tarfile.open(path, mode, format=fmt) as tf:
        for name, data, pax in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = pax
            tf.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.mark.parametrize("fmt", ["gnu-long-name", "pax-record"])
def test_an_oversized_extended_header_ends_the_read_before_it_is_read(tmp_path, fmt):
    """tarfile reads a long-name or pax header whole: a 1 MiB one is refused by its declared size."""
    big = "x" * (1 << 20)
    hostile = (f"{big}.jpg", b"3", {}) if fmt == "gnu-long-name" else ("b.jpg", b"3", {"comment": big})
    path = _tar_with(tmp_path / "h.tar", [("a.jpg", b"1", {}), ("a.txt", b"2", {}), hostile, ("c.jpg", b"4", {})],
                     fmt=tarfile.GNU_FORMAT if fmt == "gnu-long-name" else tarfile.PAX_FORMAT)
    for read in (lambda r: [k for k, _ in read_samples(path, r)], lambda r: sorted(index_samples(path, report=r))):
        report = ReadReport()
        assert read(report) == ["a"]
        assert report.error and "header_too_large" in report.error


def test_compressed_shards_are_refused_by_every_reader(tmp_path):
    """A gzip shard can expand without bound: the reader, the indexer and the training loader all refuse it."""
    from training.contrastive.data import ErrorCounter, tar_samples

    members = [(f"{i}.{ext}", b"data", {}) for i in range(3) for ext in ("jpg", "txt")]
    path = _tar_with(tmp_path / "z.tar", members, mode="w:gz")
    report = ReadReport()
    assert list(read_samples(path, report)) == [] and report.error.startswith("compressed_shard: gzip")
    report = ReadReport()
    assert index_samples(path, report=report) == {} and report.error.startswith("compressed_shard")
    errors = ErrorCounter()
    assert list(tar_samples([path], errors)) == [] and errors.count == 1
