"""Is an encoded image whole and well-formed? Checked before OpenCV sees its bytes.

Two reasons. A truncated JPEG, which libjpeg would "decode" into a half-grey
picture with a warning, must be an error, because a model fed a half image
returns a confident wrong answer. And libpng writes its own complaint about a
damaged PNG to the process's stderr from C ("libpng error: IDAT: CRC error"),
out of Python's reach, next to the one line edgerun reports per bad input; so a
PNG's chunks are walked first and each one's CRC-32 compared. On Zen 5 that is
2-4% of a PNG's decode time (32 us at 320x240, 4.5 ms for a 23 MB 12 Mpx one).

A JPEG is only checked for its end: walking its markers through the coded data
as well (restart markers, stray bytes between segments) cost 12-21 us on a 20 KB
320x240 JPEG, which decodes in 0.1-0.3 ms, and made a batch ``predict`` over
1,000 of them 8-14% slower. So libjpeg still prints its "Corrupt JPEG data: ..."
warnings where it decodes a damaged JPEG anyway, as it does for the coded data
of every damaged JPEG (a bad Huffman code, a scan cut short).
"""

from __future__ import annotations

import struct
import zlib

from edgerun.errors import shown

__all__ = ["image_fault"]

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_TRUNCATED = "truncated PNG (no IEND chunk)"
_PNG_CHUNK_HEAD = struct.Struct(">I4s")  # a chunk's length and type; its data and CRC-32 follow
_PNG_CRC = struct.Struct(">I")
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}  # colour type: bit depths
_PNG_SIDE_MAX = 1_000_000  # libpng's default limit on width and height (PNG_USER_WIDTH_MAX); an error beyond
# The walk costs 0.2 us of Python a chunk of image data and 0.7 us any other: a file of 8 MB of empty chunks
# took 0.5 s, 20 decodes' time. Bounds no encoder comes near: libpng itself keeps at most 1,000 ancillary
# chunks, and an image's data chunks hold 8 KB or more each (one every 64 bytes is allowed).
_PNG_OTHER_CHUNKS_MAX = 4096
_PNG_BYTES_PER_DATA_CHUNK = 64


def image_fault(data: bytes) -> str | None:
    """Why the JPEG or PNG ``data`` must not be decoded (one line, without the file's name); None if it may
    be, and for any other format."""
    if data[:2] == _JPEG_SOI:
        if _JPEG_EOI in data[-64:] or _jpeg_complete(data):
            return None
        return "truncated JPEG (no end-of-image marker)"
    if data[:8] == _PNG_MAGIC:
        return _png_fault(data)
    return None


def _jpeg_complete(data: bytes) -> bool:
    """True when the JPEG's entropy-coded data ends with its end-of-image marker, wherever that is.

    Phones append data after the marker (a Motion Photo's MP4, Samsung's trailer), so it is
    not always among the last bytes. The header segments are skipped by their lengths (an EXIF
    thumbnail carries an end-of-image marker of its own); from the first start-of-scan on, the
    coded data stuffs every 0xFF byte, so the first 0xFF 0xD9 there is the image's end.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan
            return data.find(_JPEG_EOI, pos) != -1
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _png_fault(data: bytes) -> str | None:
    """Why libpng would refuse the PNG, or print a warning about it, judging by its chunks; None if not.

    The chunks are walked by their lengths to IEND (what follows it is ignored) and each one's
    CRC-32 compared, so a cut or a changed byte anywhere is found. IHDR's fields are checked, and
    libpng's rules for the critical chunks: IHDR first and once; PLTE once, before the image data,
    1 to 256 entries, not in a grey image, and there in a palette image; IDAT chunks one after the
    other; IEND empty; no critical chunk libpng does not know.

    Not checked: the zlib stream inside the IDAT chunks, when it was damaged before its CRC was
    computed (an encoder's bug) or does not hold IHDR's number of pixels. Only inflating it tells,
    which costs 70% of a decode, and libpng says "libpng error: IDAT: incorrect data check", "bad
    adaptive filter value", "Not enough image data", or (the image decoded) "libpng warning: IDAT:
    Too much image data". Nor the contents of ancillary chunks (gAMA, iCCP, tRNS, eXIf...): metadata
    that libpng checks, ignores where wrong, and warns about ("libpng warning: iCCP: known incorrect
    sRGB profile") while the image decodes.
    """
    view = memoryview(data)
    size = len(data)
    pos, color, palette, image_data, previous = 8, -1, False, False, b""
    data_chunks, data_chunks_max, other_chunks = 0, 256 + size // _PNG_BYTES_PER_DATA_CHUNK, 0
    while True:
        if pos + 8 > size:
            return _PNG_TRUNCATED
        length, kind = _PNG_CHUNK_HEAD.unpack_from(data, pos)
        end = pos + 12 + length
        if kind == b"IDAT" and previous == b"IDAT" and end <= size:  # most chunks of a large image: only the CRC
            data_chunks += 1
            if data_chunks > data_chunks_max:
                return f"malformed PNG (more than {data_chunks_max:,} image data chunks in {size:,} bytes)"
            if zlib.crc32(view[pos + 4 : end - 4]) != _PNG_CRC.unpack_from(data, end - 4)[0]:
                return f"damaged PNG (chunk IDAT at byte {pos:,} fails its CRC check)"
            pos = end
            continue
        other_chunks += 1
        if other_chunks > _PNG_OTHER_CHUNKS_MAX:
            return f"malformed PNG (more than {_PNG_OTHER_CHUNKS_MAX:,} chunks besides its image data)"
        if not kind.isalpha():
            if data.count(0, pos) == size - pos:  # zeros to the end: a file cut short and padded
                return _PNG_TRUNCATED
            return f"damaged PNG (no chunk type at byte {pos + 4:,}: '{shown(kind.decode('latin-1'))}')"
        where = f"chunk {kind.decode()} at byte {pos:,}"
        if length > 0x7FFFFFFF:
            return f"damaged PNG ({where} gives a length of {length:,} bytes)"
        if end > size:
            return "truncated PNG (its IEND chunk is cut short)" if kind == b"IEND" else _PNG_TRUNCATED
        if zlib.crc32(view[pos + 4 : end - 4]) != _PNG_CRC.unpack_from(data, end - 4)[0]:
            return f"damaged PNG ({where} fails its CRC check)"
        if color < 0 and kind != b"IHDR":
            return f"malformed PNG ({where}, before IHDR)"
        if kind == b"IHDR":
            if color >= 0:
                return f"malformed PNG ({where}, a second IHDR)"
            fault = _ihdr_fault(view[pos + 8 : end - 4])
            if fault is not None:
                return fault
            color = data[pos + 17]
        elif kind == b"PLTE":
            if palette or image_data or color in (0, 4):
                after = "another PLTE" if palette else "the image data" if image_data else "an IHDR for grey pixels"
                return f"malformed PNG ({where}, after {after})"
            if not 0 < length <= 768 or length % 3:
                return f"malformed PNG ({where} holds {length} bytes, not 1 to 256 entries of 3)"
            palette = True
        elif kind == b"IDAT":
            if image_data:
                return f"malformed PNG ({where}, after chunks that follow the image data)"
            if color == 3 and not palette:
                return f"malformed PNG ({where}, in a palette image without a PLTE chunk before it)"
            image_data = True
        elif kind == b"IEND":
            if not image_data:
                return "malformed PNG (no IDAT chunk)"
            return f"malformed PNG ({where} holds {length} bytes)" if length else None
        elif not kind[0] & 0x20:  # critical: an ancillary chunk's name starts in lower case, and is ignored unknown
            return f"malformed PNG ({where} is a critical chunk libpng does not know)"
        pos, previous = end, kind


def _ihdr_fault(body: memoryview) -> str | None:
    """Why libpng would refuse the IHDR chunk's fields (the error message); None if not."""
    if len(body) != 13:
        return f"malformed PNG (its IHDR chunk holds {len(body)} bytes, not 13)"
    width, height = int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big")
    depth, color, compression, filtering, interlace = body[8:13]
    if not width or not height:
        return f"malformed PNG (its IHDR gives a size of {width:,} x {height:,} pixels)"
    if max(width, height) > _PNG_SIDE_MAX:
        return f"image is {width:,} x {height:,} pixels, more than libpng's {_PNG_SIDE_MAX:,} a side; not decoded"
    if depth not in _PNG_DEPTHS.get(color, ()):
        return f"malformed PNG (its IHDR gives colour type {color} at bit depth {depth})"
    if compression or filtering or interlace > 1:
        return (
            f"malformed PNG (its IHDR gives compression, filter and interlace methods {compression}, {filtering}, "
            f"{interlace}, not 0, 0, 0 or 1)"
        )
    return None
