"""Numeric sensor streams: CSV or JSON Lines files, named pipes or standard input, cut into windows.

Each row is one reading of one or more channels. A CSV may have a header; a
column named ``t``, ``ts``, ``time`` or ``timestamp`` is taken as the time and
not fed to the model, nor is a column with no name in the header (pandas' index
column, ``,t,x,y,z``, or the last one of lines that end with a comma). A field in
double quotes is the text inside them (``"t","x"``, as Python's ``csv`` module
quotes a header). A JSON Lines row is an array of numbers or an object of
named numbers; the names of the first object row fix the channels, and later
object rows are mapped by name (a row missing one of them, or with another
name, is a bad row). Windows of ``window`` rows start every ``hop`` rows and
are yielded as float32 arrays of shape ``[window, channels]``.

The format is the file's suffix's (``.csv``; ``.jsonl``, ``.ndjson``) unless its first
data row plainly is the other one (``edgerun.sources.rows``), as it is read, nothing read ahead, so
a live sender is never held up: a ``.csv`` whose first line that holds a row is a JSON
array or object is JSON Lines (a pipe named ``accel.csv`` fed ``[0.1, 0.2, 0.3]``), and
a ``.jsonl`` whose first data row is a CSV one (a row of numbers, or a header and a
row that reads under it) is CSV. A file that agrees with its suffix is read as it
always was, and so is a ``.jsonl`` led by a line of neither kind (a sender's banner:
one bad row). Standard input has no suffix, nor has a path with another one: there
the first line that holds a row or a header decides: one starting with ``[`` or
``{`` is JSON Lines, any other is CSV.

A regular file whose suffix names no other input (an image, ``.npy``, a video) is a
sensor file where the head of it (``_HEAD_BYTES``) is text whose first data row is a
reading (``is_sensor_spec``): a logger's ``readings``, ``accel.log``, or ``/dev/stdin``
redirected from one, which were read as an image and failed as one. Any other such
file (prose, a header alone, an image without its suffix, a named pipe, which is only
looked at) is an image input, as before.

Standard input, and a named pipe (a FIFO) given as the file, are streams: read
with ``poll`` and a short timeout, never a blocking read, so ``close()``
(SIGINT, SIGTERM, a daemon's reload) stops a run whose sender has gone quiet
within ``POLL_S`` (0.2 s, ``edgerun.inputs.stream_chunks``, shared with image
inputs read from a pipe): the reading thread ends and the pipe's descriptor is closed,
where a read blocked until the next line would hold both forever (one more
thread and descriptor for each reload of a daemon). ``poll``, not ``select``:
``select`` refuses a descriptor numbered 1024 or more, which a daemon holding
many files open gets for the pipe. A named pipe is opened without waiting for
its writer (``O_NONBLOCK``), and only once the run reads it: nothing is read
from a stream before the run, where it would be lost. A regular file is read
with plain buffered reads (a local file's read does not wait for a writer). A
device (``/dev/zero``) is refused, as a directory is.

Before the run, ``check_model`` reads the head of a file (not of a stream): its
channel count (the header's less the time column, or the first readable row's)
must be the model's, and a file none of whose first ``_LOOK_ROWS`` data rows can
be read (a semicolon-separated CSV) is refused in one line, not reported row by
row.

A row with a missing, extra or non-numeric field, a value that is not finite
(``nan``, ``inf``), a value beyond float32's range (windows are float32: ``1e39``,
``1e400``, an integer of 400 digits), or more than ``MAX_ROW_CHARS`` characters
(read in pieces and dropped, never held whole) is reported (yielded as an error
frame naming its line, so the run counts it and its consumer reports it: the
CLI prints it, the daemon logs it) and skipped; the run goes on. A CSV field is
named as the file has it: its 1-based column in the file, the time column
counted, and its header name where there is a header (``field 4 ('z')``). An input that
ends before it filled one window (an empty file, a header alone, fewer rows
than the window) is a ``SourceError``: nothing was classified, and the run must
not pass for a success.
"""

from __future__ import annotations

import collections
import itertools
import os
import stat
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerun.errors import ConfigError, SourceError
from edgerun.inputs import stream_chunks
from edgerun.sources.base import Frame
from edgerun.sources.rows import (
    MAX_ROW_CHARS,
    channel_columns,
    content_of,
    csv_fields,
    is_header,
    read_rows,
    separator_hint,
    settled,
)

__all__ = ["MAX_ROW_CHARS", "SENSOR_SUFFIXES", "SensorSource", "is_sensor_spec", "window_for"]

SENSOR_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})
#: The format each suffix names; a source without one of them (standard input) is told by its first line.
_SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: A file none of whose first this many data rows can be read is refused before the run (``check_model``):
#: a few bad rows among good ones are reported one by one, and the run goes on.
_LOOK_ROWS = 100
#: How much of a file with no sensor suffix is read to tell whether it holds readings (``is_sensor_spec``):
#: a header and a first row of some thousand channels.
_HEAD_BYTES = 64 * 1024


def is_sensor_spec(spec: str, *, by_content: bool = True) -> bool:
    """Whether a source string names a sensor source: a CSV or JSON Lines file, ``-`` for stdin, or (with
    ``by_content``) a regular file whose suffix names no other input and whose head holds readings
    (``_holds_readings``)."""
    if spec in ("-", "stdin") or Path(spec).suffix.lower() in SENSOR_SUFFIXES:
        return True
    return by_content and _holds_readings(spec)


def _holds_readings(path: str) -> bool:
    """Whether ``path`` is a regular file, with a suffix no other source claims (or none), whose first
    ``_HEAD_BYTES`` are text (no NUL byte) and whose first data row reads as a reading, CSV or JSON Lines.

    Only the head is read, once, and only from a regular file: a named pipe or a device is never
    opened (opening a pipe waits for its writer, a device may act). A file whose head is not
    readings stays an image input, read and reported as before.
    """
    from edgerun.inputs import USABLE_SUFFIXES
    from edgerun.sources.video import VIDEO_SUFFIXES

    if Path(path).suffix.lower() in USABLE_SUFFIXES | VIDEO_SUFFIXES:
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a pipe put in its place since: not waited for
    except (OSError, ValueError):  # missing, unreadable; ValueError: a NUL in the name
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, _HEAD_BYTES + 1)
    except OSError:
        return False
    finally:
        os.close(fd)
    if b"\0" in head:
        return False
    lines = head.decode("utf-8", errors="replace").splitlines(keepends=True)
    if len(head) > _HEAD_BYTES and lines:
        lines.pop()  # cut where the head ends: not a row
    first = next(read_rows(content_of(enumerate(lines, start=1)), None), None)
    return first is not None and isinstance(first[1], list)


def check_windows_wanted(given: list[str], specs: Sequence[str], named: str) -> None:
    """Refuse window options (``given``: ``--window``, ``hop``...) for a source that is not a sensor source
    (``specs``, ``named`` as the caller's message names it): ignored, they would say nothing.

    Raises:
        ConfigError: naming the options and the source.
    """
    if given and not any(is_sensor_spec(spec) for spec in specs):
        raise ConfigError(
            f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to sensor sources only (a .csv or "
            f".jsonl file, or - for standard input), and {named} is none"
        )


def window_for(model: Any, requested: int | None) -> int | None:
    """The window a sensor source must cut for ``model``: its input's row count, checked against ``requested``.

    A model whose first input is ``[batch, rows, ...]`` takes windows of ``rows``; a
    requested window that differs is a ``ConfigError`` naming both, raised before
    anything runs (``edgerun run --window``, a daemon pipeline's ``window:``).
    Whether the model takes sensor windows at all is ``SensorSource.check_model``'s
    question, asked once the source is known to be one.
    """
    shape = model.inputs[0].shape
    needed = shape[1] if len(shape) >= 2 else None
    if requested is None:
        return needed
    if needed is not None and requested != needed:
        raise ConfigError(
            f"window of {requested} rows does not fit {model.name}: it takes {needed} rows "
            f"(input tensor {model.inputs[0].describe()})"
        )
    return requested


class SensorSource:
    """Windows of numeric readings from a CSV/JSON Lines file or standard input."""

    live = False
    decoded = True
    dropped = 0

    def __init__(self, path: str, *, window: int, hop: int | None = None, fmt: str | None = None) -> None:
        if window < 1:
            raise ConfigError(f"window must be at least 1 row, got {window}")
        hop = window if hop is None else hop
        if hop < 1:
            raise ConfigError(f"hop must be at least 1 row, got {hop}")
        self.uri = path
        self.window, self.hop = window, hop
        self._stdin = path in ("-", "stdin")
        #: a stream (standard input or a named pipe): read as it comes, never looked at before the run
        self._stream = self._stdin or _is_pipe(path)
        #: True for standard input and a named pipe: what is read is gone, so a retry reads new data,
        #: never the windows it read before (a daemon neither skips nor remembers their ids)
        self.stream = self._stream
        #: True for a named pipe: its writer closing ends a run, and a daemon reads it again for the next writer
        self.pipe = self._stream and not self._stdin and not _descriptor(path)
        #: "csv" or "jsonl" as the suffix names it, None where it names neither (standard input); what the
        #: first rows are (``edgerun.sources.rows``) decides where they plainly disagree with it
        self._format = fmt or (None if self._stdin else _SUFFIX_FORMATS.get(Path(path).suffix.lower()))
        self._closed = False
        self.bad_rows = 0

    def check_model(self, model: Any) -> None:
        """Refuse, before anything runs, a model that cannot take this source's windows.

        A sensor window is ``[rows, channels]``, so the model's first input must
        be ``[batch, rows, channels]``; a file's channel count (its header less
        the time column, or its first readable data row) must be the model's,
        and one of its first ``_LOOK_ROWS`` data rows (all, in a shorter file)
        must be readable. Standard input and a named pipe cannot be looked at in
        advance (what is read is gone): there a wrong width fails row by row.

        Raises:
            ConfigError: naming the model's input tensor and what does not fit,
                or the file's first bad row (and another separator than commas,
                where its first line suggests one).
        """
        spec = model.inputs[0]
        if len(spec.shape) != 3:
            raise ConfigError(
                f"{model.name} does not take sensor windows: its input tensor {spec.describe()} is not "
                f"[batch, rows, channels], and {self.uri} gives windows of [rows, channels]"
            )
        if self._stream:
            return
        channels = spec.shape[2]
        found, unreadable, hint = self._look()
        if unreadable is not None:
            raise ConfigError(f"{self.uri}: {unreadable}{hint}")
        if found is not None and channels is not None and found != channels:
            raise ConfigError(
                f"{self.uri} has {found} channel{'' if found == 1 else 's'} per row, and {model.name} takes "
                f"{channels} (input tensor {spec.describe()}){hint}"
            )

    def _look(self) -> tuple[int | None, str | None, str]:
        """What the head of the file says, before the run: (channel count, why its rows cannot be read, hint).

        The channel count is the header's less the time column, else the first readable
        row's; None for a file with neither (empty: the run says it ended before one
        window). The reason is None unless none of the first ``_LOOK_ROWS`` data rows
        can be read; it names the first bad one. The hint (or "") is a CSV's first line
        holding another separator and no comma: its rows cannot be read as their fields.
        """
        lines = self._content()
        try:
            heads = list(itertools.islice((line for _, line in lines if line is not None), 2))
        finally:
            lines.close()  # closes the file
        first = heads[0] if heads else None
        csv_first = first is not None and settled(self._format, heads) == "csv"
        header = csv_fields(first) if first is not None and csv_first else None
        if header is not None and not is_header(header):
            header = None
        found = None if header is None else len(channel_columns(header))
        hint = separator_hint(first) if first is not None and csv_first else ""
        looked, bad = 0, ""
        rows = self._rows()
        try:
            for number, values in rows:
                if isinstance(values, list):
                    return (len(values) if found is None else found), None, hint
                looked += 1
                bad = bad or f"line {number}: {values}"
                if looked == _LOOK_ROWS:
                    return found, f"none of its first {looked} data rows can be read ({bad})", hint
        finally:
            rows.close()
        if looked == 0:
            return found, None, hint
        if looked == 1:
            return found, f"its one data row cannot be read ({bad})", hint
        return found, f"none of its {looked} data rows can be read ({bad})", hint

    def _lines(self) -> Generator[tuple[int, str | None], None, None]:
        """(line number, line); the line is None where it is longer than ``MAX_ROW_CHARS``.

        A file is read up to the first end of file met, and a line without its newline is
        only taken once the end of the file is known to follow it: where another process is
        still writing the file, the next read may bring the rest of the line, and the two
        pieces are one row, not a row with a cut value and a bad row after it. A line cut
        where the reading stops is the last row (a file's last line often lacks its newline).
        """
        if self._stdin:
            yield from enumerate(self._stream_lines(_stdin_fd()), start=1)
            return
        if self._stream:
            fd = _open_pipe(self.uri)
            try:
                yield from enumerate(self._stream_lines(fd), start=1)
            finally:
                os.close(fd)
            return
        try:
            opened = open(self.uri, encoding="utf-8", errors="replace")  # noqa: SIM115 (the with below closes it)
        except OSError as exc:  # made unreadable, or removed, since the source was opened
            raise SourceError(f"sensor file cannot be read: {self.uri}: {exc.strerror}") from exc
        with opened as stream:
            number = 0
            while not self._closed:
                line = stream.readline(MAX_ROW_CHARS + 1)
                if not line:
                    return
                number += 1
                while not line.endswith("\n") and len(line) <= MAX_ROW_CHARS:
                    rest = stream.readline(MAX_ROW_CHARS + 1 - len(line))
                    if not rest:  # the end of the file: this is its last line, and the reading ends here
                        yield number, line
                        return
                    line += rest
                if len(line) > MAX_ROW_CHARS and not line.endswith("\n"):
                    while line and not line.endswith("\n"):  # the rest of the row, read and dropped
                        line = stream.readline(MAX_ROW_CHARS + 1)
                    yield number, None
                else:
                    yield number, line

    def _stream_lines(self, fd: int) -> Iterator[str | None]:
        """Lines of a stream (standard input, a named pipe), read without blocking for longer than ``POLL_S``
        so ``close()`` is seen: the lines end then, and the caller closes the pipe it opened.

        A named pipe's descriptor is non-blocking (``_open_pipe``). Standard input's is the
        starting process's too, so its flags are left alone (``stream_chunks`` says why that is safe).

        Bytes are split into lines here (a partial line is kept until its newline
        or the end of input) and each line is decoded as UTF-8, bad bytes replaced.
        A line longer than ``MAX_ROW_CHARS`` bytes is None, its bytes dropped as they come.
        """
        pending = b""
        dropping = False  # inside a line too long to keep
        for chunk in stream_chunks(fd, lambda: self._closed):
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if self._closed:
                    return
                yield None if dropping or len(line) > MAX_ROW_CHARS else line.decode("utf-8", errors="replace") + "\n"
                dropping = False
            if len(pending) > MAX_ROW_CHARS:
                pending, dropping = b"", True
        if (pending or dropping) and not self._closed:
            yield None if dropping else pending.decode("utf-8", errors="replace")

    def _content(self) -> Generator[tuple[int, str | None], None, None]:
        """``content_of`` this source's lines; closing it closes the file or pipe."""
        lines = self._lines()
        try:
            yield from content_of(lines)
        finally:
            lines.close()

    def _rows(self) -> Generator[tuple[int, list[float] | str], None, None]:
        """(line number, values) or (line number, error text): ``read_rows`` of this source's content."""
        content = self._content()
        try:
            yield from read_rows(content, self._format)
        finally:
            content.close()

    def frames(self) -> Iterator[Frame]:
        """Windows as float32 ``[window, channels]`` arrays; bad rows as error frames."""
        rows: collections.deque[list[float]] = collections.deque(maxlen=self.window)
        since_last = 0
        index = 0
        emitted = False
        good = 0
        for number, values in self._rows():
            if isinstance(values, str):
                self.bad_rows += 1
                message = f"{self.uri} line {number}: {values}; row skipped"
                yield Frame(None, time.time(), f"{self.uri}:{number}", index, error=message)
                index += 1
                continue
            rows.append(values)
            good += 1
            since_last += 1
            if len(rows) == self.window and (not emitted or since_last >= self.hop):
                yield Frame(np.asarray(rows, dtype=np.float32), time.time(), f"{self.uri}:{number}", index)
                index += 1
                since_last = 0
                emitted = True
        if not emitted and not self._closed:  # the input ended before one window: nothing ran
            raise SourceError(
                f"the input ended after {good} readable data row{'' if good == 1 else 's'}, "
                f"fewer than one window of {self.window} rows"
            )

    def close(self) -> None:
        """Stop after the current row."""
        self._closed = True


def _is_pipe(path: str) -> bool:
    """Whether ``path`` is a named pipe (read as a stream) rather than a regular file.

    Only the path's metadata is read: opening a device may have effects of its own
    (``/dev/watchdog`` arms), and opening a named pipe waits for its writer.

    Raises:
        SourceError: ``path`` is missing, cannot be looked at, or is a directory, a device or a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: a NUL in the path
        raise SourceError(f"sensor file not found: {path}") from None
    except OSError as exc:  # a name too long, a loop of links, a folder it may not look into
        raise SourceError(f"sensor file cannot be read: {path}: {exc.strerror}") from exc
    if stat.S_ISREG(mode):
        return False
    if stat.S_ISFIFO(mode):
        return True
    if stat.S_ISDIR(mode):
        what = "a directory"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        what = "a device"
    else:
        what = "a socket" if stat.S_ISSOCK(mode) else "no regular file"
    raise SourceError(f"sensor file is {what}, not a file: {path}")


def _descriptor(path: str) -> bool:
    """Whether ``path`` leads to a process's open descriptor (``/dev/stdin``, ``/dev/fd/0``, ``/proc/self/fd/0``,
    a link to one) rather than a named pipe of its own: opened again after its end, such a pipe ends at once."""
    return os.path.realpath(path).startswith(("/proc/", "/dev/fd/"))


def _stdin_fd() -> int:
    """Standard input's file descriptor; SourceError where it has none."""
    if sys.stdin is None:  # Python found no descriptor 0 at its start (`edgerun run ... <&-`)
        raise SourceError("standard input cannot be read: it is closed")
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError) as exc:  # closed since, or not a file
        raise SourceError(f"standard input cannot be read: {exc}") from exc


def _open_pipe(path: str) -> int:
    """A named pipe opened for reading without waiting for a writer: ``poll`` waits for one instead.

    Linux reports such a pipe readable only once a writer has written or come and
    gone; until then ``poll`` times out, so a run stopped with no writer ends.
    """
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:  # removed, or made unreadable, since the source was opened
        raise SourceError(f"sensor file cannot be read: {path}: {exc.strerror}") from exc
