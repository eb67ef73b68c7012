"""Reading and writing webdataset tar shards safely: member bytes in memory, never a file extracted to disk.

A shard is untrusted input (it holds whatever the web sent). The reader only ever reads regular-file members into
memory; it never calls `extract`, so no member can write outside the shard's scope. Members that could do harm if
someone did extract them — absolute paths, `..` components, links, devices, fifos — are skipped and counted, as are
oversized members and repeated names. A truncated or corrupt tar ends the shard early with an error recorded; the
samples read before the damage are still returned.

Headers are capped too: a GNU long-name or pax header is read whole, before any member check, so one claiming
gigabytes would be read into memory; such a header (over `MAX_HEADER_BYTES`, or more than a few chained) ends the
read with an error, before it is read. A shard is a plain tar: gzip, bzip2, xz, zstd or zip input is refused (it
could expand without bound), and so is anything else that is not a tar.

Samples are grouped the way webdataset groups them: consecutive members with the same key
(`dir/000123.jpg`, `dir/000123.txt` -> key `dir/000123`, extensions `jpg`, `txt`).

The tar is parsed by `tar_stream.TarReader` (tarfile's rules at a fraction of its cost per member; a damaged header
is an error there where tarfile would end quietly). `read_samples_with_tarfile` keeps the tarfile-based reader as the
reference the parser is tested against.
"""

from __future__ import annotations

import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.core.layout import atomic_write, fs_and_path, open_binary
from pipeline.core.tar_stream import Member, TarReader, error_text

MAX_MEMBER_BYTES = 64 << 20  # no image-text sample needs more; a bigger member is skipped, not read
MAX_HEADER_BYTES = 64 << 10  # a long name or a pax record set; PATH_MAX is 4 KiB
MAX_CHAINED_HEADERS = 8  # extended headers before one member (pax + long name + long link is 3)
COMPRESSED_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd"),
                    (b"\x04\x22\x4d\x18", "lz4"), (b"PK\x03\x04", "zip"))
_SPECIAL_HEADERS = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE, tarfile.XHDTYPE,
                    tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]+)$")  # webdataset's base_plus_ext: key up to the first dot


@dataclass
class ReadReport:
    """What one shard read skipped and why (`skipped` reason -> count) and the error that ended it early, if any."""

    members: int = 0
    samples: int = 0
    skipped: Counter = field(default_factory=Counter)
    error: str | None = None

    def as_dict(self) -> dict:
        return {"members": self.members, "samples": self.samples, "skipped": dict(self.skipped), "error": self.error}


def not_a_plain_tar(head: bytes) -> str | None:
    """Why a file starting with `head` (its first 512 bytes) is not read as a shard, or None."""
    for magic, name in COMPRESSED_MAGIC:
        if head.startswith(magic):
            return f"compressed_shard: {name} data; shards are plain (uncompressed) tar files"
    return None  # anything else that is not a tar fails tarfile's header checks, and is reported as such


class _Prefixed:
    """A read-only stream: `head` (already read to sniff the format), then the rest of `fileobj`."""

    def __init__(self, head: bytes, fileobj):  # noqa: ANN001
        self.head, self.fileobj = head, fileobj

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.fileobj.read(n)
        if n is None or n < 0:
            out, self.head = self.head + self.fileobj.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.fileobj.read(n - len(out))


def unsafe_reason(member: Member | tarfile.TarInfo) -> str | None:
    """Why a member must not be read (None = a regular file with a safe relative name)."""
    if member.issym() or member.islnk():
        return "link_member"
    if member.isdev() or member.isfifo():
        return "device_member"
    if not member.isfile():
        return None if member.isdir() else "special_member"
    name = member.name
    if not name or "\x00" in name:
        return "unsafe_name"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "unsafe_name"  # absolute (POSIX or Windows drive)
    if any(part == ".." for part in re.split(r"[/\\]", name)):
        return "unsafe_name"
    return None


def split_key(name: str) -> tuple[str, str] | None:
    m = _KEY_EXT.match(name[2:] if name.startswith("./") else name)
    return (m.group(1), m.group(2).lower()) if m else None


def _safe_members(members: Iterable, report: ReadReport) -> Iterator:
    """The safe regular-file members (a TarReader's or tarfile's), counting every member and the skipped ones."""
    for member in members:
        report.members += 1
        reason = unsafe_reason(member)
        if member.isdir() and reason is None:
            continue
        if reason:
            report.skipped[reason] += 1
            continue
        if member.size > MAX_MEMBER_BYTES:
            report.skipped["member_too_large"] += 1
            continue
        yield member


def _grouped(members: Iterable, read, report: ReadReport) -> Iterator[tuple[str, dict[str, bytes]]]:  # noqa: ANN001
    """Samples from safe members: consecutive members with one key make a sample. `read(member)` gives its bytes
    or None (the read ended, `report.error` set); a key seen before, a repeated extension and a name without an
    extension are skipped and counted."""
    seen: set[str] = set()
    key, files = None, {}
    for member in members:
        parts = split_key(member.name)
        if parts is None:
            report.skipped["no_extension"] += 1
            continue
        k, ext = parts
        data = read(member)
        if data is None:
            break
        if len(data) != member.size:
            report.error = f"truncated member {member.name}: {len(data)} of {member.size} bytes"
            break
        if k != key:
            if key is not None:
                report.samples += 1
                yield key, files
            if k in seen:
                report.skipped["repeated_key"] += 1
                key, files = None, {}
                continue
            seen.add(k)
            key, files = k, {}
        elif key is None:
            continue  # further members of a skipped repeated key
        if ext in files:
            report.skipped["repeated_member"] += 1
            continue
        files[ext] = data
    if key is not None:
        report.samples += 1
        yield key, files


def iter_samples(fileobj, report: ReadReport | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) per sample of a tar read as a stream (works on any readable file object)."""
    report = report if report is not None else ReadReport()
    head = fileobj.read(512)
    report.error = not_a_plain_tar(head)
    if report.error:
        return
    reader = TarReader(_Prefixed(head, fileobj), MAX_HEADER_BYTES, MAX_CHAINED_HEADERS)

    def read(member: Member) -> bytes | None:
        try:
            return reader.read_data(member)
        except (OSError, EOFError) as err:  # the storage failing mid-member ends the shard, as damage does
            report.error = error_text(err)
            return None

    yield from _grouped(_safe_members(_until_damage(reader, report), report), read, report)


def _until_damage(reader: TarReader, report: ReadReport) -> Iterator[Member]:
    """The reader's members; its error goes to the report as soon as it stops (before the last sample is out)."""
    yield from reader
    report.error = report.error or reader.error


def read_samples(url: str, report: ReadReport | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Open a shard by URL and yield its samples (see iter_samples)."""
    with open_binary(url) as f:
        yield from iter_samples(f, report)


class CappedTarInfo(tarfile.TarInfo):
    """tarfile's header parser, refusing extended headers (long names, pax records) over MAX_HEADER_BYTES or
    chained more than MAX_CHAINED_HEADERS deep, before they are read."""

    def _proc_member(self, tf: tarfile.TarFile):  # noqa: ANN202 - tarfile's own hook
        if self.type not in _SPECIAL_HEADERS:
            return super()._proc_member(tf)
        if self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(f"header_too_large: a {self.size}-byte extended header at offset "
                                      f"{self.offset} (cap {MAX_HEADER_BYTES})")
        depth = getattr(tf, "_winnow_header_depth", 0)
        if depth >= MAX_CHAINED_HEADERS:
            raise tarfile.HeaderError(f"header_too_large: more than {MAX_CHAINED_HEADERS} extended headers in a row")
        tf._winnow_header_depth = depth + 1
        try:
            return super()._proc_member(tf)
        finally:
            tf._winnow_header_depth = depth


def read_samples_with_tarfile(url: str, report: ReadReport | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """`read_samples` on Python's tarfile, as the reader was before the streaming parser (`tar_stream`): the
    reference the fast parser is tested against (tests/unit/pipeline/test_tar_stream.py) and the loader bench's
    "before" arm. Not used by the pipeline."""
    report = report if report is not None else ReadReport()
    with open_binary(url) as f:
        head = f.read(512)
        report.error = not_a_plain_tar(head)
        if report.error:
            return
        try:
            tf = tarfile.open(fileobj=_Prefixed(head, f), mode="r|", tarinfo=CappedTarInfo)
        except (tarfile.TarError, EOFError, OSError) as err:
            report.error = error_text(err)
            return

        def members() -> Iterator[tarfile.TarInfo]:
            while True:
                try:
                    member = tf.next()
                except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as err:
                    report.error = error_text(err)
                    return
                if member is None:
                    return
                tf.members.clear()  # tarfile keeps every header it read: millions of members would fill memory
                yield member

        def read(member: tarfile.TarInfo) -> bytes | None:
            try:
                return tf.extractfile(member).read()  # bytes only: regular files, in memory
            except (tarfile.TarError, EOFError, OSError) as err:
                report.error = error_text(err)
                return None

        with tf:
            yield from _grouped(_safe_members(members(), report), read, report)


@dataclass
class MemberRange:
    offset: int
    size: int


def index_samples(url: str, keys: set[str] | None = None,
                  report: ReadReport | None = None) -> dict[str, dict[str, MemberRange]]:
    """key -> {ext: byte range} of a tar's safe members, from headers only (data is skipped over, not read)."""
    report = report if report is not None else ReadReport()
    fs, path = fs_and_path(url)
    out: dict[str, dict[str, MemberRange]] = {}
    with fs.open(path, "rb") as f:
        report.error = not_a_plain_tar(f.read(512))
        if report.error:
            return out
        f.seek(0)
        reader = TarReader(f, MAX_HEADER_BYTES, MAX_CHAINED_HEADERS, seekable=True, chunk=16 << 10)
        for member in _safe_members(_until_damage(reader, report), report):
            parts = split_key(member.name)
            if parts is None or (keys is not None and parts[0] not in keys):
                continue
            out.setdefault(parts[0], {}).setdefault(parts[1], MemberRange(member.offset_data, member.size))
    return out


def read_ranges(url: str, ranges: Iterable[MemberRange]) -> list[bytes]:
    """Bytes of the given member ranges of one tar, read in offset order (one open, sequential seeks)."""
    ranges = list(ranges)
    order = sorted(range(len(ranges)), key=lambda i: ranges[i].offset)
    out: list[bytes] = [b""] * len(ranges)
    fs, path = fs_and_path(url)
    with fs.open(path, "rb") as f:
        for i in order:
            f.seek(ranges[i].offset)
            data = f.read(ranges[i].size)
            if len(data) != ranges[i].size:
                raise OSError(f"{url}: short read at offset {ranges[i].offset} ({len(data)} of {ranges[i].size})")
            out[i] = data
    return out


def write_tar(url: str, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """Write (key, {ext: bytes}) samples as a webdataset tar, atomically; returns the number of samples."""
    import webdataset as wds

    n = 0
    with atomic_write(url, "wb") as f:
        # Bytes in, bytes out (no encoder: a `.gz` extension must not be compressed again); a fixed mtime makes
        # the same samples give the same bytes and checksum.
        sink = wds.TarWriter(f, encoder=False, mtime=0.0)
        for key, files in samples:
            sink.write({"__key__": key, **{ext: files[ext] for ext in sorted(files)}})
            n += 1
        sink.close()
    return n



def sort_tar(src: str, dst: str) -> int:
    """Rewrite the local tar `src` as `dst` with its samples in key order and a fixed mtime; returns the samples.

    A downloader's threads write samples in the order their requests finish, which changes from run to run; in key
    order (the URL list's order) the same downloads give the same bytes, so everything trained or scored downstream
    reads the same stream. Members are copied by byte range (one sample in memory at a time)."""
    index = index_samples(src)

    def ordered() -> Iterator[tuple[str, dict[str, bytes]]]:
        with open(src, "rb") as f:
            for key in sorted(index):
                files = {}
                for ext, r in index[key].items():
                    f.seek(r.offset)
                    files[ext] = f.read(r.size)
                yield key, files

    return write_tar(dst, ordered())
