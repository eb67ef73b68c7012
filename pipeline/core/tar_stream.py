"""A streaming tar header parser for the shard reader: tarfile's reading rules at a fraction of its per-member cost.

Python's tarfile spends ~0.16 ms per webdataset sample (three members), much of it on the pax header webdataset's
TarWriter writes before every member (a float mtime); this parser takes about a fifth of that (bench/loader.py). It
parses only what the shard reader needs - name, type, size, data offset - from large buffered reads, and follows
tarfile where the two could differ (`tarfile.py` of 3.11): ustar names decoded with tarfile's encoding and
`surrogateescape`, the ustar prefix joined to the name (not for GNU types), a V7 regular file ending in `/` is a
directory, the header checksum verified (unsigned or signed, as tarfile accepts), octal or base-256 number fields,
pax `x` records parsed by tarfile's own record rule (`path` and `size` override the header, an unreadable `size` is
0), GNU `L` long names, and the first extended header in a chain wins where two set the same field (tarfile applies
the outer one last). Data follows the header for regular files and unknown types only, as in tarfile.

Where it differs, it is on purpose and stricter or simpler:
- a damaged header (bad checksum, bad number, a short header block) ends the read with an error; tarfile ends as if
  the archive were complete. A clean end of file at a header boundary is still a normal end, as in tarfile.
- pax global (`g`) records are parsed for the caps but not applied: tarfile would give a global `path` or `size` to
  every later member, which no shard writer does.
- sparse files (GNU `S`, pax `GNU.sparse.*`) are members that are never read (the caller counts them as special):
  no image or caption is written sparse, and reassembling them would be code for nothing.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from zlib import adler32

BLOCK = 512
_ZERO = bytes(BLOCK)
_REGULAR = frozenset((b"0", b"\x00", b"7", b"S"))
_SUPPORTED = frozenset((b"0", b"\x00", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"L", b"K", b"S"))
_GNU = frozenset((b"L", b"K", b"S"))
_EXTENDED = frozenset((b"x", b"X", b"g", b"L", b"K"))  # headers that describe the next one
# The number fields as tarfile and GNU tar write them (zero-padded octal, NUL-ended); anything else takes tarfile's
# own parser, so odd but valid headers (spaces, base-256 sizes) read as tarfile reads them.
# (mode, uid, gid, size, mtime, checksum; type, link name, magic, user and group names; device numbers)
_PLAIN_NUMBERS = re.compile(rb"(?:[0-7]{7}\x00){3}[0-7]{11}[\x00 ][0-7]{11}[\x00 ][0-7]{6}\x00.{173}"
                            rb"(?:[0-7]{7}\x00|\x00{8}){2}", re.S)
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # tarfile's rule: "%d %s=%s\n", length counting itself
_PAX_CHARSET = re.compile(rb"\d+ hdrcharset=([^\n]+)\n")


def error_text(err: BaseException) -> str:
    """How a read error is recorded (a shard report's `error`): its type and message, capped."""
    return f"{type(err).__name__}: {err}"[:300]


class TarFormatError(Exception):
    """The tar is damaged or refused (its message is the reader's error)."""


class Member:
    """One tar entry, with tarfile.TarInfo's type predicates (what `shards.unsafe_reason` asks)."""

    __slots__ = ("name", "type", "size", "offset", "offset_data", "sparse")

    def __init__(self, name: str, type: bytes, size: int, offset: int, offset_data: int, sparse: bool) -> None:
        self.name, self.type, self.size = name, type, size
        self.offset, self.offset_data, self.sparse = offset, offset_data, sparse

    def isfile(self) -> bool:
        return self.type in _REGULAR and not self.sparse

    isreg = isfile

    def isdir(self) -> bool:
        return self.type == b"5"

    def issym(self) -> bool:
        return self.type == b"2"

    def islnk(self) -> bool:
        return self.type == b"1"

    def isfifo(self) -> bool:
        return self.type == b"6"

    def isdev(self) -> bool:
        return self.type in (b"3", b"4", b"6")


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _nts(b: bytes) -> str:
    """tarfile's `nts` with its default encoding and error handler."""
    p = b.find(b"\x00")
    return (b if p < 0 else b[:p]).decode(tarfile.ENCODING, "surrogateescape")


class _Source:
    """Large reads from a file object, handed out in pieces; tracks the absolute offset. Seeks over skipped data
    only when `seekable` (the indexer); a stream (a download, a hashing wrapper) is read through instead."""

    def __init__(self, fileobj, chunk: int, seekable: bool) -> None:  # noqa: ANN001
        self.f, self.chunk, self.seekable = fileobj, chunk, seekable
        self.buf, self.i, self.base = b"", 0, 0  # buf[0] is at absolute offset `base`

    @property
    def pos(self) -> int:
        return self.base + self.i

    def read(self, n: int) -> bytes:
        """n bytes, fewer only at the end of the file."""
        i, j = self.i, self.i + n
        if j <= len(self.buf):
            self.i = j
            return self.buf[i:j]
        parts, need = [self.buf[i:]], n - (len(self.buf) - i)
        self.base, self.buf, self.i = self.base + len(self.buf), b"", 0
        while need > 0:
            data = self.f.read(max(need, self.chunk))
            if not data:
                break
            if len(data) > need:  # keep the rest for the next reads
                parts.append(data[:need])
                self.base, self.buf, self.i = self.base, data, need
                break
            parts.append(data)
            self.base += len(data)
            need -= len(data)
        return b"".join(parts)

    def skip(self, n: int) -> bool:
        """Move n bytes on; False when the file ends first."""
        if self.i + n <= len(self.buf):
            self.i += n
            return True
        if not self.seekable:
            while n > 0:
                got = len(self.read(min(n, 1 << 20)))
                if not got:
                    return False
                n -= got
            return True
        target = self.pos + n
        self.base, self.buf, self.i = target, b"", 0
        self.f.seek(target - 1)
        return bool(self.f.read(1))  # tarfile's own check that the skipped data was there


class TarReader:
    """Iterate a tar's members (every non-extended header); `read_data(member)` right after a member is yielded
    gives its bytes (otherwise its data is skipped). Iteration stops at the end of the archive, or at damage with
    `error` set. Extended headers over `max_header_bytes` or more than `max_chained` in a row are refused before
    they are read, with the same `header_too_large` text as the tarfile-based reader."""

    def __init__(self, fileobj, max_header_bytes: int, max_chained: int, *, seekable: bool = False,  # noqa: ANN001
                 chunk: int = 1 << 20) -> None:
        self.src = _Source(fileobj, chunk, seekable)
        self.max_header_bytes, self.max_chained = max_header_bytes, max_chained
        self.error: str | None = None
        self._skip = 0  # bytes of the current member's data (and padding) not yet consumed

    def __iter__(self) -> Iterator[Member]:
        try:
            while True:
                if self._skip and not self.src.skip(self._skip):
                    raise TarFormatError("unexpected end of data")
                self._skip = 0
                start = self.src.pos
                h = self.src.read(BLOCK)
                if len(h) < BLOCK:
                    if not h and start:
                        return  # the end blocks are missing, but every member is whole: tarfile ends here too
                    raise TarFormatError("empty file" if not h else f"truncated header at offset {start}")
                if h == _ZERO:
                    return  # end of archive
                yield self._member(h, start)
        except (TarFormatError, OSError, EOFError) as err:  # damage, or the storage failing under the read
            self.error = error_text(err)

    def read_data(self, member: Member) -> bytes:
        """The member's bytes (short when the file ends early: the caller reports the truncation)."""
        data = self.src.read(member.size)
        self._skip -= len(data)
        return data

    def _numbers(self, h: bytes, start: int) -> int:
        """The header's size, after tarfile's checks (checksum, every number field readable)."""
        if _PLAIN_NUMBERS.match(h, 100, 345):
            chksum, size = int(h[148:154], 8), int(h[124:135], 8)
            if chksum != _unsigned_checksum(h) and chksum not in tarfile.calc_chksums(h):
                raise TarFormatError(f"bad checksum at offset {start}")
            return size
        try:
            return tarfile.TarInfo.frombuf(h, tarfile.ENCODING, "surrogateescape").size
        except tarfile.HeaderError as err:
            raise TarFormatError(f"{err} at offset {start}") from None

    def _member(self, h: bytes, start: int) -> Member:
        """The member whose header (or chain of extended headers) starts with block `h` at `start`."""
        name = size = None  # set by extended headers; the first in the chain wins, as in tarfile
        long_name = sparse = False
        depth, first = 0, start  # a chain's member starts at its first extended header, as tarfile's offset
        while True:
            typ, hsize = h[156:157], self._numbers(h, start)
            if typ not in _EXTENDED and typ != b"S":
                break
            if hsize > self.max_header_bytes:
                raise TarFormatError(f"header_too_large: a {hsize}-byte extended header at offset {start} "
                                     f"(cap {self.max_header_bytes})")
            if depth >= self.max_chained:
                raise TarFormatError(f"header_too_large: more than {self.max_chained} extended headers in a row")
            depth += 1
            if typ == b"S":
                sparse = True
                ext = h[482]
                while ext:  # old GNU sparse: more sparse maps in whole blocks before the data
                    more = self.src.read(BLOCK)
                    if len(more) < BLOCK:
                        raise TarFormatError("unexpected end of data")
                    ext = more[504]
                break
            body = self.src.read(_padded(hsize))
            if typ in (b"x", b"X", b"g"):
                records = _pax_records(body)
                if typ != b"g":
                    if b"path" in records and name is None:
                        name = _pax_name(records[b"path"], body).rstrip("/")
                    if b"size" in records and size is None:
                        try:
                            size = int(records[b"size"].decode("utf-8", "surrogateescape"))
                        except ValueError:
                            size = 0  # tarfile's rule for an unreadable pax number
                    if b"GNU.sparse." in body:
                        sparse = sparse or any(k.startswith(b"GNU.sparse.") for k in records)
            elif typ == b"L" and name is None:
                name, long_name = _nts(body), True
            if typ == b"g" and first == start:
                first = self.src.pos  # tarfile gives no member a global header's offset
            start = self.src.pos
            h = self.src.read(BLOCK)
            if len(h) < BLOCK or h == _ZERO:
                raise TarFormatError(f"no member after an extended header at offset {start}")
        is_dir = typ == b"5" or (typ == b"\x00" and _nts(h[:100]).endswith("/"))
        if is_dir:
            typ = b"5"
        if name is None:
            name = _nts(h[:100])
            if is_dir:
                name = name.rstrip("/")
            if h[345] and typ not in _GNU:
                name = _nts(h[345:500]) + "/" + name
                if is_dir:
                    name = name.rstrip("/")
        elif long_name and is_dir:
            name = name.removesuffix("/")
        size = hsize if size is None else size
        if size < 0:
            raise TarFormatError(f"negative size at offset {start}")
        data = self.src.pos
        self._skip = _padded(size) if (typ in _REGULAR or typ not in _SUPPORTED) else 0
        return Member(name, typ, size, first, data, sparse)


def _unsigned_checksum(h: bytes) -> int:
    """tarfile's unsigned header checksum (the checksum field counted as spaces), at C speed: adler32's low half is
    1 + the byte sum mod 65521, exact for 256 bytes (at most 65,280); `sum(h)` costs ten times as much."""
    return (adler32(h[:256]) & 0xFFFF) + (adler32(h[256:]) & 0xFFFF) - 2 - sum(h[148:156]) + 256


def _pax_records(body: bytes) -> dict[bytes, bytes]:
    """keyword -> value of a pax header, by tarfile's parsing rule (a later record wins)."""
    out, pos = {}, 0
    while m := _PAX_RECORD.match(body, pos):
        length = int(m.group(1))
        if length == 0:
            raise TarFormatError("invalid header: a zero-length pax record")
        out[m.group(2)] = body[m.end(2) + 1:m.start(1) + length - 1]
        pos += length
    return out


def _pax_name(value: bytes, body: bytes) -> str:
    """A pax path as tarfile decodes it: UTF-8, or (hdrcharset=BINARY) tarfile's encoding, else the fallback."""
    charset = _PAX_CHARSET.search(body)
    encoding = tarfile.ENCODING if charset and charset.group(1) == b"BINARY" else "utf-8"
    try:
        return value.decode(encoding, "strict")
    except UnicodeDecodeError:
        return value.decode(tarfile.ENCODING, "surrogateescape")
