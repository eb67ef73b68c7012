"""The streaming tar parser against the tarfile-based reader it replaced: the same samples, counts and errors on
tars from every writer the pipeline meets, hostile members, truncations and corruptions.

Error text differs by design (the parser names its own errors; the `header_too_large` text is kept). One behaviour
differs on purpose: where a header block is damaged (bad checksum, unreadable number, a partial block), tarfile ends
the archive quietly and the parser records an error; the samples and counts before it are the same."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from pipeline.core import shards
from pipeline.core.shards import ReadReport, index_samples, read_ranges, read_samples, read_samples_with_tarfile
from pipeline.core.tar_stream import TarReader

HEADER_DAMAGE = ("bad checksum", "truncated header", "invalid header", "no member after", "empty file")


def read_both(path: str) -> tuple[list, ReadReport, ReadReport]:
    """The parser's samples (asserted equal to tarfile's), its report and tarfile's."""
    ref, fast = ReadReport(), ReadReport()
    want = list(read_samples_with_tarfile(path, ref))
    got = list(read_samples(path, fast))
    assert got == want
    assert (fast.members, fast.samples, dict(fast.skipped)) == (ref.members, ref.samples, dict(ref.skipped))
    if ref.error:
        assert fast.error, ref.error
    elif fast.error:  # tarfile ends quietly at a damaged header; the parser says so
        assert any(s in fast.error for s in HEADER_DAMAGE), (fast.error, ref.error)
    check_index(path, got, fast)
    return got, fast, ref


def check_index(path: str, samples: list, stream: ReadReport) -> None:
    """The indexer (seeks over data) finds the members the stream read, at offsets holding the same bytes."""
    report = ReadReport()
    index = index_samples(path, report=report)
    assert report.members == stream.members and bool(report.error) == bool(stream.error), (report, stream)
    for key, files in samples:
        exts = sorted(files)
        assert dict(zip(exts, read_ranges(path, [index[key][e] for e in exts]), strict=True)) == files


def add(tf: tarfile.TarFile, name: str, data: bytes = b"", type: bytes = tarfile.REGTYPE, linkname: str = "",
        pax: dict | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mtime = type, linkname, len(data), 1_700_000_000
    info.pax_headers = pax or {}
    if type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    tf.addfile(info, io.BytesIO(data) if data else None)


def members_of_every_kind(rng: random.Random, fmt: int) -> list[tuple]:
    """(name, data, type, linkname) of regular samples and everything the reader must skip or handle."""
    long_dir = "d" * 60 + "/" + "e" * 60  # > 100 chars: a ustar prefix, a GNU long name or a pax path
    out = []
    for i in range(12):
        key = f"{'sub/' if i % 3 == 0 else ''}{i:06d}"
        if i == 4:
            key = f"{long_dir}/{i:06d}"
        if i == 5 and fmt != tarfile.USTAR_FORMAT:
            key = "ключ/ü-" + "x" * 300  # unicode, > 255 bytes
        for ext in ("jpg", "txt", "json"):
            out.append((f"{key}.{ext}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000])), tarfile.REGTYPE, ""))
        if i == 2:
            out += [("000002.txt", b"again", tarfile.REGTYPE, ""), ("000001.jpg", b"repeat key", tarfile.REGTYPE, "")]
        if i == 6:
            out += [("../escape.jpg", b"x", tarfile.REGTYPE, ""), ("/abs.jpg", b"x", tarfile.REGTYPE, ""),
                    ("a/../../up.jpg", b"x", tarfile.REGTYPE, ""), ("link.jpg", b"", tarfile.SYMTYPE, "/etc/passwd"),
                    ("hard.jpg", b"", tarfile.LNKTYPE, "000001.jpg"), ("dev.jpg", b"", tarfile.CHRTYPE, ""),
                    ("blk.jpg", b"", tarfile.BLKTYPE, ""), ("fifo.jpg", b"", tarfile.FIFOTYPE, ""),
                    ("dir", b"", tarfile.DIRTYPE, ""), ("noext", b"data", tarfile.REGTYPE, ""),
                    ("odd.jpg", b"unknown type data", b"Z", ""), ("cont.txt", b"contiguous", tarfile.CONTTYPE, "")]
            if fmt == tarfile.GNU_FORMAT:
                out.append(("longlink.jpg", b"", tarfile.SYMTYPE, "/" + "t" * 200))
    return out


def write_tarfile(path: str, fmt: int, seed: int, pax_globals: dict | None = None) -> str:
    rng = random.Random(seed)
    with tarfile.open(path, "w", format=fmt, pax_headers=pax_globals) as tf:
        for name, data, type, linkname in members_of_every_kind(rng, fmt):
            add(tf, name, data, type, linkname)
    return path


def write_webdataset(path: str, seed: int) -> str:
    rng = random.Random(seed)
    samples = [(f"{'part/' if i % 2 else ''}{i:09d}" + ("é" * 80 if i == 3 else ""),
                {"jpg": rng.randbytes(rng.randrange(0, 5000)), "txt": f"caption {i}".encode(), "json": b"{}"})
               for i in range(20)]
    shards.write_tar(path, samples)
    return path


WRITERS = {
    "webdataset": lambda p, s: write_webdataset(p, s),
    "ustar": lambda p, s: write_tarfile(p, tarfile.USTAR_FORMAT, s),
    "gnu": lambda p, s: write_tarfile(p, tarfile.GNU_FORMAT, s),
    "pax": lambda p, s: write_tarfile(p, tarfile.PAX_FORMAT, s),
    "pax-global": lambda p, s: write_tarfile(p, tarfile.PAX_FORMAT, s, {"comment": "made by a test"}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_every_writers_tars_read_as_tarfile_reads_them(tmp_path, writer):
    path = WRITERS[writer](str(tmp_path / "a.tar"), 0)
    samples, fast, ref = read_both(path)
    assert fast.error is None and ref.error is None and len(samples) >= 10
    with open(path, "rb") as f, tarfile.open(path) as tf:  # every member's name, type, size and offsets as tarfile's
        reader = TarReader(f, 1 << 16, 8)
        assert [(m.name, m.type, m.size, m.offset, m.offset_data) for m in reader] == \
            [(m.name, m.type, m.size, m.offset, m.offset_data) for m in tf.getmembers()]
        assert reader.error is None
    if writer != "webdataset":
        assert {"unsafe_name", "link_member", "device_member", "special_member", "no_extension", "repeated_key",
                "repeated_member"} <= set(fast.skipped), fast.skipped


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_oversized_members_are_skipped_alike(tmp_path, writer, monkeypatch):
    monkeypatch.setattr(shards, "MAX_MEMBER_BYTES", 600)
    _, fast, _ = read_both(WRITERS[writer](str(tmp_path / "a.tar"), 1))
    assert fast.skipped["member_too_large"] > 0


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_truncated_tars_read_alike(tmp_path, writer):
    whole = open(WRITERS[writer](str(tmp_path / "a.tar"), 2), "rb").read()
    with tarfile.open(tmp_path / "a.tar") as tf:
        end = max(m.offset_data + -(-m.size // 512) * 512 for m in tf.getmembers())  # then the end blocks
    rng = random.Random(writer)
    cuts = {rng.randrange(len(whole)) for _ in range(40)} | {0, 1, 511, 512, 513, len(whole) - 1024}
    for cut in sorted(cuts):
        path = tmp_path / f"cut{cut}.tar"
        path.write_bytes(whole[:cut])
        _, fast, _ = read_both(str(path))
        if cut % 512 and cut < end:  # a cut inside a block is reported; at a block boundary, a quiet end as tarfile's
            assert fast.error, cut


def header_offsets(path: str) -> list[int]:
    """Offsets of every header block, extended ones included."""
    with tarfile.open(path) as tf:
        out = []
        for m in tf.getmembers():
            out += range(m.offset, m.offset_data, 512)
    return out


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_corrupted_tars_read_alike(tmp_path, writer):
    whole = open(WRITERS[writer](str(tmp_path / "a.tar"), 3), "rb").read()
    headers = header_offsets(str(tmp_path / "a.tar"))
    rng = random.Random(f"corrupt-{writer}")
    for trial in range(60):
        data = bytearray(whole)
        for _ in range(rng.choice([1, 1, 2, 4])):
            # mostly in header blocks (where damage changes what is read), some anywhere
            pos = rng.choice(headers) + rng.randrange(512) if rng.random() < 0.8 else rng.randrange(len(data))
            data[pos] = rng.randrange(256)
        path = tmp_path / f"bad{trial}.tar"
        path.write_bytes(bytes(data))
        read_both(str(path))


def with_header_field(path: str, member: int, start: int, value: bytes) -> None:
    """Rewrite a field of the `member`-th header block and fix its checksum (a valid header tarfile never writes)."""
    data = bytearray(open(path, "rb").read())
    off = header_offsets(path)[member]
    data[off + start:off + start + len(value)] = value
    data[off + 148:off + 156] = b" " * 8
    data[off + 148:off + 156] = b"%06o\x00 " % sum(data[off:off + 512])
    open(path, "wb").write(bytes(data))


def test_odd_but_valid_headers_read_alike(tmp_path):
    """Base-256 sizes, space-padded numbers, a pax size over the header's, a V7 directory and a sparse-typed member."""
    path = str(tmp_path / "odd.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(6):
            add(tf, f"{i}.jpg", b"j" * (100 * i + 7))
    with_header_field(path, 1, 124, b"\x80" + (107).to_bytes(11, "big"))  # base-256 size, as GNU tar writes big ones
    with_header_field(path, 2, 100, b"    644 ")  # a mode tarfile reads, outside the plain form
    with_header_field(path, 3, 124, b"  00000317 \x00")
    samples, fast, ref = read_both(path)
    assert [k for k, _ in samples] == [str(i) for i in range(6)] and fast.error is None

    path = str(tmp_path / "paxsize.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "a.jpg", b"abc", pax={"size": "3"})  # tarfile writes 0 in the header: the pax size is the size
        add(tf, "b.jpg", b"", pax={"size": "junk"})  # unreadable: tarfile takes 0
        add(tf, "c.jpg", b"c", pax={"path": "renamed/c.jpg", "comment": "x" * 600})
        add(tf, "v7dir/", b"", type=tarfile.AREGTYPE)
        add(tf, "d.jpg", b"d")
    samples, fast, _ = read_both(path)
    assert dict(samples) == {"a": {"jpg": b"abc"}, "b": {"jpg": b""}, "renamed/c": {"jpg": b"c"}, "d": {"jpg": b"d"}}


def test_sparse_members_are_skipped_and_the_rest_read(tmp_path):
    """An old-GNU sparse member (tarfile would reassemble it; no shard writer makes one) is counted as special."""
    path = str(tmp_path / "sparse.tar")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        add(tf, "a.jpg", b"1")
        add(tf, "s.jpg", b"x" * 600)
        add(tf, "b.jpg", b"2")
    with_header_field(path, 1, 156, tarfile.GNUTYPE_SPARSE)
    report = ReadReport()
    assert dict(read_samples(path, report)) == {"a": {"jpg": b"1"}, "b": {"jpg": b"2"}}
    assert dict(report.skipped) == {"special_member": 1} and report.members == 3 and report.error is None


def test_header_caps_match_the_tarfile_reader(tmp_path, monkeypatch):
    """Over-long and over-chained extended headers end both readers at the same member, with the same text."""
    path = str(tmp_path / "chain.tar")
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        add(tf, "a.jpg", b"1")
        add(tf, "b" * 150 + ".jpg", b"2")  # a GNU long name: one extended header
        add(tf, "c" * 150 + ".jpg", b"", type=tarfile.SYMTYPE, linkname="l" * 150)  # long link + long name: two
        add(tf, "d.jpg", b"4")
    def text(error: str) -> str:  # tarfile's exception type leads its text; the cap's own words must match
        return error[error.index("header_too_large"):]

    for cap in (0, 1, 2):
        monkeypatch.setattr(shards, "MAX_CHAINED_HEADERS", cap)
        samples, fast, ref = read_both(path)
        if cap < 2:
            assert text(fast.error) == text(ref.error) and len(samples) == (1 if cap == 0 else 2)
        else:
            assert fast.error is None is ref.error and len(samples) == 3  # the link skipped
    monkeypatch.setattr(shards, "MAX_CHAINED_HEADERS", 8)
    monkeypatch.setattr(shards, "MAX_HEADER_BYTES", 100)
    _, fast, ref = read_both(path)
    assert text(fast.error) == text(ref.error)
    assert text(fast.error) == "header_too_large: a 155-byte extended header at offset 1024 (cap 100)"


def test_a_stream_is_read_in_large_chunks_and_never_seeked(tmp_path):
    """A download or hashing stream has only read(n): the parser reads it forward, in big pieces."""
    raw = open(write_webdataset(str(tmp_path / "a.tar"), 4), "rb").read()

    class Stream:
        def __init__(self) -> None:
            self.f, self.reads = io.BytesIO(raw), []

        def read(self, n: int = -1) -> bytes:
            self.reads.append(n)
            return self.f.read(n)

    stream = Stream()
    report = ReadReport()
    samples = list(shards.iter_samples(stream, report))
    assert len(samples) == 20 and report.error is None
    assert len(stream.reads) <= 4, stream.reads  # the 512-byte sniff, then 1 MiB reads: not one per member


def test_a_storage_error_mid_shard_ends_it_with_the_samples_before(tmp_path):
    """An OSError from the file (a dropped connection) is the shard's error, as it was with tarfile, not a crash."""
    raw = open(write_webdataset(str(tmp_path / "a.tar"), 5), "rb").read()

    class Failing(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            if self.tell() > len(raw) // 2:
                raise OSError("connection reset")
            return super().read(min(n, 4096) if n and n > 0 else 4096)  # small reads: the failure lands mid-shard

    report = ReadReport()
    samples = list(shards.iter_samples(Failing(raw), report))
    assert 0 < len(samples) < 20 and report.samples == len(samples)
    assert report.error == "OSError: connection reset"


def test_the_reader_alone_reports_members_and_offsets():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "x.jpg", b"hello", pax={"mtime": "0.5"})
        add(tf, "y.txt", b"")
    buf.seek(0)
    reader = TarReader(buf, 1 << 16, 8)
    got = [(m.name, m.size, m.offset_data, reader.read_data(m) if m.name == "x.jpg" else None) for m in reader]
    assert reader.error is None
    assert got[0][:2] == ("x.jpg", 5) and buf.getvalue()[got[0][2]:got[0][2] + 5] == b"hello" and got[0][3] == b"hello"
    assert got[1][:2] == ("y.txt", 0)
