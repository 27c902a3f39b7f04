"""The container of a ``torch.save`` zip, checked so that sdlens reads exactly the bytes torch would read.

torch reads its archives with miniz, Python with :mod:`zipfile`; the two disagree on malformed archives (a
duplicated ``data.pkl``: miniz takes the first copy, zipfile the last; a local header naming another file
than the central directory; bytes hidden between members; data prepended to the archive). An archive where
such a disagreement is possible is refused as *ambiguous* (:class:`~sdlens.errors.UnsafeArchiveError`)
rather than read one way while torch reads it another. Checked, for every member: unique name, all under
one top-level folder (torch's archive name is the first member's folder), stored or deflated only, no
encryption or other unusual flag bits, local header agreeing with the central directory, members back to
back from byte 0 up to the central directory, which ends where the end-of-central-directory record starts,
and (for every member sdlens reads: the pickles and small records, not the tensor data) the CRC-32.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO

from sdlens.errors import CheckpointError, UnsafeArchiveError
from sdlens.io.pickle_scan import MAX_PICKLE_BYTES

__all__ = ["MAX_MEMBERS", "ZipMember", "crc_ok", "read_member", "torch_zip_members"]

MAX_MEMBERS = 1_000_000
_ALLOWED_FLAGS = 0x0002 | 0x0004 | 0x0008 | 0x0800  # deflate options, data descriptor, UTF-8 names
_EOCD, _EOCD64, _LOC64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"


@dataclass(frozen=True)
class ZipMember:
    name: str
    local_name: str  # as the member's local header spells it (differs only in an ambiguous archive)
    data_start: int  # absolute offset of the (possibly compressed) data
    compress_size: int
    file_size: int
    crc: int
    method: int


def _end_record(f: BinaryIO, size: int, src: str) -> tuple[int, int, int]:
    """(entries, central directory offset, offset of the first end record) from the end of the file."""
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    while at >= 0 and (
        len(tail) - at < 22 or at + 22 + struct.unpack("<H", tail[at + 20 : at + 22])[0] != len(tail)
    ):
        at = tail.rfind(_EOCD, 0, at)
    if at < 0:
        raise CheckpointError(src, "truncated or corrupt zip archive (no end-of-central-directory record)")
    disk, cd_disk, n_here, n_total, cd_size, cd_offset = struct.unpack("<HHHHII", tail[at + 4 : at + 20])
    eocd = size - tail_len + at
    end_of_cd = eocd
    loc = eocd - 20
    raw = b""
    if loc >= 0:
        f.seek(loc)
        raw = f.read(20)
    needs64 = 0xFFFFFFFF in (cd_size, cd_offset) or 0xFFFF in (n_here, n_total)
    if needs64 and raw[:4] != _LOC64:
        raise CheckpointError(src, "truncated or corrupt zip archive (bad zip64 locator)")
    if raw[:4] == _LOC64:  # torch writes the zip64 records even for small archives
        rec = struct.unpack("<Q", raw[8:16])[0]
        f.seek(rec)
        raw = f.read(56)
        if len(raw) < 56 or raw[:4] != _EOCD64:
            raise CheckpointError(src, "truncated or corrupt zip archive (bad zip64 end record)")
        rec_size, _, _, disk, cd_disk, n_here, n_total, cd_size, cd_offset = struct.unpack(
            "<QHHIIQQQQ", raw[4:56]
        )
        if rec + 12 + rec_size != loc:
            raise UnsafeArchiveError(src, "bytes between the zip64 end record and its locator")
        end_of_cd = rec
    if disk or cd_disk or n_here != n_total:
        raise UnsafeArchiveError(src, "multi-disk zip archive")
    if cd_offset + cd_size != end_of_cd:
        raise UnsafeArchiveError(
            src,
            f"data past the central directory (bytes {cd_offset + cd_size}..{end_of_cd} belong to no record)",
        )
    return n_total, cd_offset, eocd


def _descriptor_len(f: BinaryIO, end: int, crc: int, zip64: bool) -> int | None:
    """Length of the data descriptor at ``end`` whose CRC matches, or None."""
    f.seek(end)
    raw = f.read(24)
    signed = raw[:4] == b"PK\x07\x08"
    off = 4 if signed else 0
    if len(raw) < off + 4 or struct.unpack("<I", raw[off : off + 4])[0] != crc:
        return None
    return off + 4 + (16 if zip64 else 8)


def _central_directory(f: BinaryIO, size: int, src: str) -> tuple[list[zipfile.ZipInfo], int]:
    """(every central-directory entry, the central directory's offset), checked against the end record."""
    n_total, cd_offset, _eocd = _end_record(f, size, src)
    if n_total > MAX_MEMBERS:
        raise CheckpointError(src, f"zip archive has {n_total:,} members (limit {MAX_MEMBERS:,})")
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        start_dir = zf.start_dir
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, OSError) as e:
        raise CheckpointError(src, f"truncated or corrupt zip archive ({e})") from None
    if start_dir != cd_offset:
        raise UnsafeArchiveError(src, f"{start_dir - cd_offset} bytes precede the archive (offsets disagree)")
    if len(infos) != n_total:
        raise UnsafeArchiveError(
            src, f"central directory lists {len(infos)} members, the end record {n_total}"
        )
    if not infos:
        raise CheckpointError(src, "zip archive has no members (not a torch.save checkpoint)")
    return infos, cd_offset


def _name_problems(infos: list[zipfile.ZipInfo], problems: list[str]) -> str:
    """The archive's top-level folder; duplicate names and members outside it go to ``problems``."""
    dupes = [n for n, c in Counter(i.filename for i in infos).items() if c > 1]
    if dupes:
        problems.append(
            f"duplicate member name {dupes[0]!r} (torch reads one copy, Python's zipfile another)"
        )
    first = infos[0].filename
    prefix = first.split("/", 1)[0] + "/" if "/" in first else ""
    stray = next((i.filename for i in infos if not prefix or not i.filename.startswith(prefix)), None)
    if stray is not None:
        problems.append(f"member {stray!r} is not under the archive's top-level folder {prefix!r}")
    return prefix


def _flag_problems(info: zipfile.ZipInfo, problems: list[str]) -> None:
    name = info.filename
    if info.flag_bits & 0x1 or info.flag_bits & 0x40:
        problems.append(f"member {name!r} is encrypted")
    elif info.flag_bits & ~_ALLOWED_FLAGS:
        problems.append(f"member {name!r} has unusual zip flag bits {info.flag_bits:#06x}")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        problems.append(f"member {name!r} uses unusual compression method {info.compress_type}")


def _local_header(
    f: BinaryIO, info: zipfile.ZipInfo, src: str, problems: list[str]
) -> tuple[ZipMember, tuple[int, int, str]]:
    """A member read off its local header (checked against the central directory), and its byte span (header
    to end of data descriptor)."""
    name = info.filename
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise CheckpointError(src, f"zip member {name!r} has no valid local header (corrupt archive)")
    flags, method, crc, csize, usize, nlen, xlen = struct.unpack("<2xHH4xIIIHH", head[4:30])
    raw_name = f.read(nlen)
    local_name = raw_name.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if local_name != name:
        problems.append(f"local header names {local_name[:80]!r} but the central directory {name[:80]!r}")
    elif (
        method != info.compress_type
        or (flags ^ info.flag_bits) & 0x0809
        or not flags & 0x8
        and (
            crc != info.CRC
            or (csize != 0xFFFFFFFF and csize != info.compress_size)
            or (usize != 0xFFFFFFFF and usize != info.file_size)
        )
    ):
        problems.append(f"local header of {name!r} disagrees with the central directory")
    start = info.header_offset + 30 + nlen + xlen
    end = start + info.compress_size
    if info.flag_bits & 0x8:
        zip64 = info.file_size >= 0xFFFFFFFF or info.compress_size >= 0xFFFFFFFF or usize == 0xFFFFFFFF
        dlen = _descriptor_len(f, end, info.CRC, zip64)
        if dlen is None:
            problems.append(f"data descriptor of {name!r} disagrees with the central directory")
            dlen = 0
        end += dlen
    member = ZipMember(
        name, local_name, start, info.compress_size, info.file_size, info.CRC, info.compress_type
    )
    return member, (info.header_offset, end, name)


def _layout_problems(spans: list[tuple[int, int, str]], cd_offset: int, problems: list[str]) -> None:
    """Members must lie back to back from byte 0 up to the central directory."""
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin != pos:
            what = (
                "overlaps the member before it"
                if begin < pos
                else f"follows {begin - pos} bytes outside any member"
            )
            problems.append(f"member {name!r} {what}")
        pos = max(pos, end)
    if pos != cd_offset:
        problems.append(f"{cd_offset - pos} bytes between the last member and the central directory")


def torch_zip_members(f: BinaryIO, size: int, src: str) -> tuple[str, list[ZipMember], list[str]]:
    """(the archive's top-level folder, every member in central-directory order -- duplicates included --,
    the ways torch could read it differently than sdlens). Raises only when the archive cannot be parsed;
    the caller scans every candidate pickle, then refuses an ambiguous archive."""
    infos, cd_offset = _central_directory(f, size, src)
    problems: list[str] = []
    prefix = _name_problems(infos, problems)

    members: list[ZipMember] = []
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        _flag_problems(info, problems)
        member, span = _local_header(f, info, src, problems)
        spans.append(span)
        members.append(member)
    _layout_problems(spans, cd_offset, problems)
    return prefix, members, problems


def read_member(f: BinaryIO, m: ZipMember, src: str, max_bytes: int = MAX_PICKLE_BYTES, *, check_crc: bool = True
                ) -> bytes:  # fmt: skip
    """A member's bytes (inflated if deflated; any other method is read as stored), size-capped, CRC-checked."""
    if m.file_size > max_bytes or m.compress_size > max_bytes:
        raise CheckpointError(
            src, f"zip member {m.name!r} is {m.file_size:,} bytes (limit {max_bytes >> 20} MiB)"
        )
    f.seek(m.data_start)
    raw = f.read(m.compress_size)
    if len(raw) < m.compress_size:
        raise CheckpointError(src, f"zip member {m.name!r} is truncated")
    if m.method == zipfile.ZIP_DEFLATED:
        d = zlib.decompressobj(-15)
        try:
            raw = d.decompress(raw, max_bytes + 1)
        except zlib.error as e:
            raise CheckpointError(src, f"zip member {m.name!r} does not inflate ({e})") from None
        if len(raw) > max_bytes:
            raise CheckpointError(src, f"zip member {m.name!r} inflates past the {max_bytes >> 20} MiB limit")
    if check_crc and not crc_ok(raw, m):
        raise UnsafeArchiveError(
            src, f"CRC-32 mismatch in {m.name!r} (altered after writing; torch may read other bytes)"
        )
    return raw


def crc_ok(raw: bytes, m: ZipMember) -> bool:
    return len(raw) == m.file_size and zlib.crc32(raw) == m.crc
