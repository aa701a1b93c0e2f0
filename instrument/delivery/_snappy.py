"""Snappy's block format (not the framed one), as remote write requires.

Written here rather than taken from a package: the format is small, a greedy 4-byte matcher
in pure Python compresses about 8 MB/s (a remote-write request of 10,000 series is about
1 MB before compression), and remote write then needs no dependency beyond the three. The
output is what any snappy decoder reads: a varint of the uncompressed length, then literal
and copy elements (google/snappy's format_description.txt); the tests decode it with
cramjam's snappy as well as with :func:`decompress`.
"""

from __future__ import annotations

__all__ = ["compress", "decompress"]

_MIN_MATCH = 4
_MAX_OFFSET = 65535  # copies use 2-byte offsets
_BLOCK = 65536  # the reference compressor's fragment size: matches stay inside one
_STRIDES = (64, 16, 4, 1)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(out: bytearray, data: bytes, start: int, end: int) -> None:
    size = end - start
    if size <= 0:
        return
    n = size - 1
    if n < 60:
        out.append(n << 2)
    else:
        width = (n.bit_length() + 7) // 8  # 1 to 4 bytes
        out.append((59 + width) << 2)
        out += n.to_bytes(width, "little")
    out += data[start:end]


def _copy(out: bytearray, offset: int, length: int) -> None:
    while length > 0:
        step = min(length, 64)  # a copy with a 2-byte offset holds 1 to 64 bytes
        out.append(2 | ((step - 1) << 2))
        out += offset.to_bytes(2, "little")
        length -= step


def compress(data: bytes) -> bytes:
    """Snappy block compression: greedy matching of 4-byte prefixes within 64 KiB blocks."""
    out = bytearray(_varint(len(data)))
    for block_start in range(0, len(data), _BLOCK):
        block_end = min(block_start + _BLOCK, len(data))
        table: dict[bytes, int] = {}
        literal_start = pos = block_start
        while pos + _MIN_MATCH <= block_end:
            key = data[pos : pos + _MIN_MATCH]
            candidate = table.get(key)
            table[key] = pos
            if candidate is None or pos - candidate > _MAX_OFFSET:
                pos += 1
                continue
            length = _MIN_MATCH
            room = block_end - pos
            # Extended in shrinking strides: a slice comparison runs in C, a byte at a time
            # in Python, and matches in a write are tens of bytes long.
            for stride in _STRIDES:
                while (
                    length + stride <= room
                    and data[candidate + length : candidate + length + stride]
                    == data[pos + length : pos + length + stride]
                ):
                    length += stride
            _literal(out, data, literal_start, pos)
            _copy(out, pos - candidate, length)
            pos += length
            literal_start = pos
        _literal(out, data, literal_start, block_end)
    return bytes(out)


def decompress(data: bytes) -> bytes:
    """Decode snappy's block format (used to check the compressors; raises ValueError)."""
    size = shift = pos = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated length")
        byte = data[pos]
        pos += 1
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            n = tag >> 2
            if n >= 60:
                width = n - 59
                n = int.from_bytes(data[pos : pos + width], "little")
                pos += width
            length = n + 1
            if pos + length > len(data):
                raise ValueError("literal runs past the end")
            out += data[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            length = 4 + ((tag >> 2) & 7)
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            length = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise ValueError("copy offset out of range")
        for _ in range(length):  # byte by byte: a copy may overlap what it writes
            out.append(out[-offset])
    if len(out) != size:
        raise ValueError(f"decoded {len(out)} bytes, the header says {size}")
    return bytes(out)
