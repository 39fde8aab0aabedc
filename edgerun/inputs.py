"""Input files: expanding paths and directories, reading images and arrays.

Reading is separate from decoding: an image file is returned as its encoded
bytes (the model decides gray or colour), an ``.npy`` file as an array loaded
with ``allow_pickle=False`` (arrays from outside are untrusted data), its
header's declared size checked against the bytes that follow it before numpy
allocates anything (:func:`load_npy`, shared with the MQTT source).

An input is opened without waiting for a named pipe's writer (``O_NONBLOCK``)
and looked at through its descriptor. A regular file is read whole with plain
reads. A named pipe, ``/dev/stdin`` or a device is read with ``poll`` in steps
of ``POLL_S`` (:func:`stream_chunks`, shared with the sensor source), never a
blocking call, so a reader given a stop flag (a source's ``close()``: SIGINT,
SIGTERM, a daemon's reload) ends within ``POLL_S`` and closes the pipe even
while its writer is quiet or absent; such a read is bounded (``pipe_max_bytes``),
so a pipe fed for ever is refused rather than filling the memory.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import stat
import tokenize
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy_format

from edgerun.errors import UnusableInput
from edgerun.files import TEMPORARY
from edgerun.opencv import max_image_pixels
from edgerun.processing.image import IMAGE_SUFFIXES

__all__ = [
    "NPY_ERRORS",
    "NPY_MAGIC",
    "POLL_S",
    "InputRef",
    "expand_inputs",
    "json_array",
    "load_npy",
    "npy_reason",
    "pipe_max_bytes",
    "read_input",
    "stream_chunks",
    "USABLE_SUFFIXES",
]

#: What ``np.load`` raises for a malformed or cut ``.npy``: its header parser lets ``SyntaxError`` and
#: ``tokenize.TokenError`` through (a header with a NUL byte, an unclosed quote), besides ``ValueError``.
NPY_ERRORS: tuple[type[Exception], ...] = (ValueError, EOFError, OSError, SyntaxError, tokenize.TokenError)

USABLE_SUFFIXES = IMAGE_SUFFIXES | {".npy"}

#: the first bytes of every ``.npy`` file
NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # a .npz archive: refused by name once np.load has opened it
_INTP_MAX = int(np.iinfo(np.intp).max)

#: How often a read of a quiet pipe (standard input, a named pipe) looks at its stop flag, in seconds.
POLL_S = 0.2
_POLL_MS = round(POLL_S * 1000)  # the same, as ``poll`` takes it
_READ_BYTES = 65536  # a pipe's buffer on Linux
#: Bytes per pixel a pipe may give for one input: 16-bit RGBA stored uncompressed, the most of the image
#: formats read here (``pipe_max_bytes``).
_PIPE_BYTES_PER_PIXEL = 8
#: ``open`` flags of an input: a named pipe opens at once, writer or not (``poll`` waits for one); no effect on a
#: regular file.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC


#: What the error of a missing input named ``-`` or ``stdin`` (``run --source``'s names for standard input, of
#: sensor readings there) adds: here every name is a file's, and standard input is ``/dev/stdin``, an image.
_STDIN_HINT = dict.fromkeys(
    ("-", "stdin"),
    " (to read an image from standard input, name it /dev/stdin; "
    "edgerun run MODEL --source - reads sensor readings from it)",
)


class InputRef(NamedTuple):
    """One input to process, or the reason a given path yields none (a tuple: a folder yields thousands)."""

    path: str
    error: str | None = None


def expand_inputs(paths: Iterable[str]) -> Iterator[InputRef]:
    """Files given directly, and the usable files under directories (walked, sorted).

    A missing path, a device (``/dev/zero`` would be read without end), or a
    directory without usable files yields an ``InputRef`` carrying the error, so
    the caller reports it and goes on with the rest.
    """
    for raw in paths:
        path = Path(raw)
        try:
            mode = os.stat(raw).st_mode
        except FileNotFoundError:
            yield InputRef(raw, f"{raw}: no such file or directory" + _STDIN_HINT.get(raw, ""))
            continue
        except OSError as exc:  # a link loop, a folder on the way we may not enter
            yield InputRef(raw, f"{raw}: cannot read ({exc.strerror})")
            continue
        except ValueError:  # a NUL byte in the name
            yield InputRef(raw, f"{raw!r}: not a valid file name")
            continue
        if stat.S_ISDIR(mode):
            try:
                os.scandir(path).close()
            except OSError as exc:  # a folder we may not list: say so, not "no usable files"
                yield InputRef(raw, f"{raw}: cannot read directory: {exc.strerror}")
                continue
            found = sorted(_usable_files(str(path), "" if str(path) == "." else str(path)))
            if not found:
                kinds = ", ".join(sorted(USABLE_SUFFIXES))
                yield InputRef(raw, f"{raw}: no usable files in directory (looked for {kinds})")
            for p in found:
                yield InputRef(p)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # read whole: /dev/zero would fill the memory
            yield InputRef(raw, f"{raw}: is a device, not a file")
        else:  # a file, or a pipe (/dev/stdin), read to its end
            yield InputRef(raw)


def _usable_files(folder: str, prefix: str) -> Iterator[str]:
    """Usable files under ``folder``, at any depth, in no particular order, named ``prefix/...``.

    ``os.scandir`` rather than ``Path.rglob``: a directory of 1,000 images is
    walked in 3 ms instead of 13 (no ``Path`` object and no extra ``stat`` per
    entry). Like ``rglob``, it does not descend into linked directories, and
    a link to a file counts as that file; a link that leads to no file (broken, or
    a loop) is listed, so that the run reports it as a failed input (given on its
    own, it would be), where it was left out without a word.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # unreadable subdirectory: skipped, as rglob skips it
    for entry in entries:
        try:
            name = os.path.join(prefix, entry.name)  # as Path would spell it: no "./" in front
            if entry.is_dir(follow_symlinks=False):
                yield from _usable_files(entry.path, name)
            elif (
                os.path.splitext(entry.name)[1].lower() in USABLE_SUFFIXES
                and not TEMPORARY.fullmatch(entry.name)  # an annotated image being written, or one a kill left
                and (_leads_nowhere(entry) or entry.is_file())
            ):
                yield name  # a broken link or a link loop too: reading it says which, rather than nothing
        except OSError:
            continue


def _leads_nowhere(entry: os.DirEntry[str]) -> bool:
    """Whether ``entry`` is a link to nothing: its target missing, or a loop of links."""
    if not entry.is_symlink():
        return False
    try:
        os.stat(entry.path)
    except OSError:
        return True
    return False


def read_input(path: str | os.PathLike[str], *, stopped: Callable[[], bool] | None = None) -> bytes | np.ndarray:
    """Read one input file: ``.npy`` as an array, anything else as encoded image bytes.

    A regular file is read with ``os.read`` on the descriptor (its size, then the read that
    finds its end), with no ``Path`` and no file object: this runs once per image of a batch
    run, and ``open(path, "rb").read()`` took 10 syscalls and 7.7 us a small JPEG where this
    takes 5 and 5.3 us (EPYC, Python 3.11). A named pipe, ``/dev/stdin`` or a device is read to its end by
    :func:`stream_chunks`, up to ``pipe_max_bytes()``; ``stopped`` (a source's ``close()``) ends
    that read within ``POLL_S`` even while no writer writes, and the pipe is closed. Without
    ``stopped`` it waits for the end however long that takes.

    Raises:
        UnusableInput: the file is missing, unreadable or a directory, a ``.npy`` does not load, a
            pipe gives more than ``pipe_max_bytes()``, or ``stopped`` became true before its end.
    """
    path = os.fspath(path)
    if not path:  # "": no such file" would name nothing
        raise UnusableInput("an input path is an empty string")
    if "\0" in path:  # os.open would say so as a bare ValueError
        raise UnusableInput(f"{path!r}: holds a NUL character, which no file name can")
    try:
        fd = os.open(path, _OPEN_FLAGS)
        try:
            info = os.fstat(fd)
            regular = stat.S_ISREG(info.st_mode)
            if os.path.splitext(path)[1].lower() != ".npy":
                return _read_file(fd, info.st_size) if regular else _read_stream(path, fd, stopped)
            try:
                if regular:
                    with open(fd, "rb", closefd=False) as f:
                        return load_npy(f, info.st_size)
                data = _read_stream(path, fd, stopped)
                return load_npy(io.BytesIO(data), len(data))
            except EOFError:
                raise UnusableInput(f"{path}: empty or truncated .npy file") from None
            except (ValueError, SyntaxError, tokenize.TokenError) as exc:
                raise UnusableInput(f"{path}: not a plain numeric .npy array ({npy_reason(exc)})") from exc
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise UnusableInput(f"{path}: no such file") from None
    except IsADirectoryError:  # a directory opens; reading it says what it is
        raise UnusableInput(f"{path}: is a directory") from None
    except OSError as exc:
        raise UnusableInput(f"{path}: cannot read ({exc.strerror})") from exc


def _read_file(fd: int, size: int) -> bytes:
    """A regular file's bytes: one read of its ``size`` and a byte more, then reads to its end (one, unless
    it has grown since its size was taken, or is a ``/proc`` file that says 0): the reads ``open().read()``
    makes, without its ``isatty`` ioctl, its ``lseek`` calls and its second ``fstat``."""
    data = os.read(fd, size + 1)
    while more := os.read(fd, _READ_BYTES):
        data += more
    return data


def _read_stream(path: str, fd: int, stopped: Callable[[], bool] | None) -> bytes:
    """A pipe's or a device's bytes to its end, at most ``pipe_max_bytes()``; UnusableInput past them, or
    once ``stopped()`` is true before the end."""
    limit = pipe_max_bytes()
    parts: list[bytes] = []
    got = 0
    for chunk in stream_chunks(fd, stopped):
        if not chunk:
            return b"".join(parts)
        got += len(chunk)
        if got > limit:
            raise UnusableInput(
                f"{path}: more than {limit:,} bytes, {_PIPE_BYTES_PER_PIXEL} for each of the "
                f"{max_image_pixels():,} pixels of the largest image decoded; not read further"
            )
        parts.append(chunk)
    raise UnusableInput(f"{path}: stopped before the end of its input")


def stream_chunks(fd: int, stopped: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """The bytes of a pipe or a device as they come (up to 64 KiB each), then ``b""`` at its end; nothing
    more once ``stopped()`` is true (not even ``b""``), which is looked at every ``POLL_S`` while it is quiet.

    ``poll``, never a blocking read: no ``close()`` reaches a thread blocked in ``read()``, and it would
    stay there, with its descriptor, until the next byte came (for a named pipe no one writes, never).
    ``poll``, not ``select``, which refuses a descriptor numbered 1024 or more. Linux reports a named
    pipe opened with ``O_NONBLOCK`` readable only once a writer has written or come and gone.
    A blocking descriptor (standard input, whose flags are its starting process's) may be given: a
    read after ``poll`` said it was readable returns at once, unless another reader of the same pipe
    took the bytes in between (then it waits for the next ones). The caller closes ``fd``.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while stopped is None or not stopped():
        if not poller.poll(_POLL_MS):  # readable, at its end (POLLHUP), or not a descriptor (read says why)
            continue
        try:
            chunk = os.read(fd, _READ_BYTES)
        except BlockingIOError:  # a non-blocking pipe said ready, and had nothing yet
            continue
        yield chunk
        if not chunk:
            return


def pipe_max_bytes() -> int:
    """The most bytes read from a pipe or a device for one input: 8 for each pixel of the largest image
    decoded (``max_image_pixels()``: 512 MiB by default), what such an image takes stored uncompressed
    in 16-bit RGBA, the most of the formats read here. A pipe fed for ever is refused there, not held
    whole; a regular file's size is known before it is read, and it is read whole."""
    return max_image_pixels() * _PIPE_BYTES_PER_PIXEL


def load_npy(stream: io.BufferedIOBase, size: int) -> np.ndarray:
    """The ``.npy`` array in ``stream``, of which ``size`` bytes from its position on are all there is.

    ``np.load`` allocates the whole array its header declares before reading any of it, so
    128 bytes declaring 10**12 float32 values were a ``MemoryError``, and a header declaring
    a few gigabytes reserved them on a small device; a dimension past the platform's
    integers (``(2**70,)``) was an ``OverflowError``. So the header is read first (numpy's
    own reader) and the data it declares checked against the bytes that follow it; then
    ``np.load`` reads the array, without pickles. What is no ``.npy`` at all is refused by its
    first bytes (``np.load`` took it for pickled data and said how to load that unsafely), and a
    ``.npz`` archive is refused, not returned open.

    Raises:
        One of ``NPY_ERRORS`` (``npy_reason`` gives it as one line): ``EOFError`` for empty
        or cut data, ``ValueError`` for a header that is malformed, declares a negative or
        oversized dimension or more data than follows, an object array, or data that is no
        ``.npy`` at all.
    """
    start = stream.tell()
    head = stream.read(len(NPY_MAGIC))
    if head and head != NPY_MAGIC and not head.startswith(_ZIP_MAGIC):  # np.load would call it pickled data
        raise ValueError("no .npy header: it does not begin with \\x93NUMPY")
    if head == NPY_MAGIC:
        stream.seek(start)
        version = npy_format.read_magic(stream)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
        # 3.0 differs from 2.0 only in its header's encoding (UTF-8 field names), not in any size
        read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, _, dtype = read(stream)
        if any(not 0 <= d <= _INTP_MAX for d in shape):  # np.load let an OverflowError through
            raise ValueError("its header declares a dimension that is negative or too large")
        declared = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
        follows = size - (stream.tell() - start)
        if declared > follows:
            raise ValueError(f"its header declares {declared:,} bytes of data, and {max(follows, 0):,} follow it")
    stream.seek(start)
    loaded = np.load(stream, allow_pickle=False)  # a pickle refused; nothing at all an EOFError
    if not isinstance(loaded, np.ndarray):  # an NpzFile: np.load opens a .npz archive whatever the name
        loaded.close()
        raise ValueError("a .npz archive, not a .npy array")
    return loaded


def npy_reason(exc: BaseException) -> str:
    """One of ``NPY_ERRORS`` from ``load_npy`` as a one-line reason (numpy's own may run to three lines)."""
    if isinstance(exc, (SyntaxError, tokenize.TokenError)):  # numpy's header parser, on a NUL or an open quote
        return "malformed header"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


_NOT_ARRAY = "not a rectangular JSON array of numbers"
_BEYOND = "a JSON array with NaN, infinite values or values beyond float32's range"
_MAX_DIMS = 64  # numpy's limit on an array's dimensions (NPY_MAXDIMS since numpy 2)


def json_array(text: bytes | str) -> np.ndarray:
    """A JSON array of numbers, nested and rectangular, as float32; ``ValueError`` saying what is wrong.

    Only numbers count: numpy would read strings (``"1"``), ``true``, ``false`` and ``null`` as
    numbers once cast, and a ``true`` among numbers as 1.0 without a cast. A number past float32's
    range, NaN and an infinity are refused too: a model would turn them into a confident answer.
    """
    try:
        parsed = json.loads(text)
    except RecursionError:  # "[[[[..." deeper than Python's stack; without "from": its traceback is huge
        raise ValueError("a JSON array nested too deeply") from None
    except ValueError as exc:  # not JSON, or an integer of more digits than Python converts (4,300)
        raise ValueError(_BEYOND if "integer string conversion" in str(exc) else _NOT_ARRAY) from exc
    try:
        data = np.asarray(parsed)  # no dtype: a cast would take "1", true and null as numbers
    except (ValueError, TypeError, OverflowError) as exc:  # ragged ([[1, 2], [3]]), or too many dimensions
        too_deep = "maximum number of dimension" in str(exc)
        raise ValueError(f"a JSON array of more than {_MAX_DIMS} dimensions" if too_deep else _NOT_ARRAY) from exc
    if data.dtype.kind == "O" and data.ndim and all(type(v) in (int, float) for v in data.flat):
        # integers past int64, which numpy keeps as Python objects: numbers all the same, taken as floats
        # (1e29 is well inside float32's range) and checked against that range below like any other
        try:
            data = np.array([float(v) for v in data.flat], dtype=np.float64).reshape(data.shape)
        except OverflowError:  # past float64's range, so far past float32's
            raise ValueError(_BEYOND) from None
    words = (b"true", b"false", b"null") if isinstance(text, bytes) else ("true", "false", "null")
    if data.ndim == 0 or data.dtype.kind not in "iuf" or any(w in text for w in words):  # type: ignore[operator]
        raise ValueError(_NOT_ARRAY)  # strings, booleans, null
    with np.errstate(over="ignore"):  # a value past float32's range becomes infinite, refused just below
        array = data.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(_BEYOND)
    return array
