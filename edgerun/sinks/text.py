"""Text sinks: a table or JSON Lines on standard output, JSON Lines or CSV files."""

from __future__ import annotations

import contextlib
import fcntl
import io
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

from edgerun.errors import ConfigError, PipelineError, shown
from edgerun.files import write_all
from edgerun.sinks.base import Result

__all__ = ["CsvSink", "JsonlSink", "TableSink", "nan_as_null", "top1", "write_stdout"]

#: Bytes of lines standard output keeps before writing them (Python's own buffer size); none on a terminal
#: or where Python's standard output is unbuffered (``python -u``, ``PYTHONUNBUFFERED``).
STDOUT_BUFFER = 8192


def top1(output: Any) -> tuple[str, float | None]:
    """(label, score) of a classification output; a short text otherwise."""
    if isinstance(output, list) and output and isinstance(output[0], dict):
        return str(output[0]["label"]), float(output[0]["score"])
    if isinstance(output, list):
        return " ".join(f"{v:.4g}" for v in output[:8]) + (" ..." if len(output) > 8 else ""), None
    if isinstance(output, dict):
        return "; ".join(f"{k}: {_count(v)} value(s)" for k, v in output.items()), None
    return str(output), None


def _count(value: Any) -> int:
    """The numbers in ``value``, however nested its lists are (a [1, 10] tensor holds 10, not 1)."""
    return sum(_count(v) for v in value) if isinstance(value, list) else 1


class TableSink:
    """One human-readable line per result on standard output (errors go to stderr via the run).

    Lines are written whole (see ``_Stdout``); a failed write is a ``PipelineError`` naming
    stdout (a ``BrokenPipeError`` as it is: the reader went away).
    """

    inline = True  # a formatted line: cheap enough for the inference thread (see Sink)
    name = "stdout"

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = _stdout_lines(stream)

    def publish(self, result: Result) -> None:
        """Print one line: input, best label and score (and the runners-up), latency."""
        record = result.record
        if not result.ok:
            return
        output = record["output"]
        label, score = top1(output)
        text = f"{label:<12} {score:.4f}" if score is not None else label
        if isinstance(output, list) and len(output) > 1 and isinstance(output[0], dict):
            text += "   (then " + ", ".join(f"{o['label']} {o['score']:.3f}" for o in output[1:]) + ")"
        self._stream.write(f"{shown(record['input']):<40} {shown(text)}   {record['latency_ms']:.2f} ms\n")

    def close(self) -> None:
        """Flush standard output."""
        self._stream.flush()


class JsonlSink:
    """One JSON object per line, to standard output or appended to a file.

    A file is flushed after every record, so a killed run loses at most the
    line being written; ``--resume`` reads it back. Every line is valid JSON: a
    NaN or infinite number (a float model fed extreme values) is written as
    ``null``, as the outbox writes it, not as ``NaN``, which JSON has not.
    """

    def __init__(self, path: str | None = None) -> None:
        import json

        self._dumps = json.dumps
        self.path = path
        self.name = path or "stdout"
        self.inline = path is None  # standard output; a file is flushed per record, off the inference thread
        self._write: Callable[[str], None]
        self._finish: Callable[[], None]
        if path is None:
            stdout = _stdout_lines(None)
            self._write, self._finish = stdout.write, stdout.flush
        else:
            file = _AppendFile(path, b"\n")
            self._write, self._finish = file.write_text, file.close

    def publish(self, result: Result) -> None:
        """Write the record as one line.

        Raises:
            PipelineError: the file or standard output cannot be written (a full disk); the run stops.
        """
        try:
            line = self._dumps(result.record, separators=(", ", ": "), allow_nan=False)
        except ValueError:  # NaN or an infinity somewhere in the output
            line = self._dumps(nan_as_null(result.record), separators=(", ", ": "))
        self._write(line + "\n")  # json.dumps writes ASCII; a reader gone away is a BrokenPipeError, as it is

    def close(self) -> None:
        """Flush standard output, or fsync and close the file."""
        self._finish()


def nan_as_null(value: Any) -> Any:
    """``value`` with every NaN and infinite float, however deeply nested, replaced by None (JSON's
    ``null``: ``NaN`` is not JSON); the JSON Lines sinks' records and the API's answers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: nan_as_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_as_null(v) for v in value]
    return value


class _AppendFile:
    """A file that whole records are appended to, each with write(2) at once (nothing left in a buffer).

    A record that the disk refuses part way (a full disk) is cut off again, so the file never keeps
    the beginning of a record: a retried run would write that record again, whole, after it, and
    ``--resume`` would find a line that is not a record. A pipe or a device (``/dev/stdout``) has no
    size to cut back to and is written as it is. Every ``OSError`` is a ``ConfigError`` at open and
    a ``PipelineError`` later, naming the file.
    """

    def __init__(self, path: str, line_break: bytes) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {_reason(exc)}") from exc
        try:
            info = os.fstat(self._fd)
            self._regular = stat.S_ISREG(info.st_mode)
            self.new = not (self._regular and info.st_size)
            if not self.new and _last_byte(path) != line_break[-1:]:
                os.write(self._fd, line_break)  # records start on a line of their own, whatever the file held
        except OSError as exc:
            os.close(self._fd)
            raise ConfigError(f"cannot write {path}: {_reason(exc)}") from exc

    def write(self, data: bytes) -> None:
        """Append ``data`` whole, or raise ``PipelineError`` with the file as it was before."""
        try:
            start = os.fstat(self._fd).st_size if self._regular else 0
            write_all(self._fd, data)
        except OSError as exc:
            if self._regular:
                with contextlib.suppress(OSError):  # the record's beginning, where the disk took one
                    os.ftruncate(self._fd, start)
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc

    def write_text(self, text: str) -> None:
        """``write`` of ASCII or UTF-8 text."""
        self.write(text.encode("utf-8"))

    def close(self) -> None:
        """fsync (a regular file: a pipe or a device cannot be) and close; closed whatever fails.

        The descriptor is forgotten (-1): a pipeline thread left blocked in another sink that wakes
        later fails on it (EBADF) instead of writing into whatever file took its number.
        """
        fd, self._fd = self._fd, -1
        try:
            if self._regular:
                os.fsync(fd)
        except OSError as exc:
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc
        finally:
            os.close(fd)


class _Stdout:
    """Standard output, written whole lines at a time with write(2) on its descriptor.

    Not through ``sys.stdout``, whose buffer writes as much as fits: a full disk kept the first
    part of a line (a torn last record), and a write blocked on a pipe nobody reads held the
    buffer's lock against every later write, the interpreter's own at exit included. Lines wait
    here until ``STDOUT_BUFFER`` bytes have come (none wait where ``sys.stdout`` would write each
    at once: a terminal, ``PYTHONUNBUFFERED``), then go in one write;
    where standard output is a regular file written at its end, what a failed write put there is
    cut off again, so the file keeps whole lines. A pipe or a terminal keeps what it took: a write
    to a pipe is only cut short when its reader went away. ``sys.stdout`` is flushed before the
    first write, so what was printed before comes first. A failed write is a ``PipelineError``
    naming stdout; a ``BrokenPipeError`` is itself: the reader went away, which callers end on
    quietly. Only where ``sys.stdout`` is
    the process's own ``TextIOWrapper``: a notebook's stream (ipykernel) or a live display's proxy
    (rich) has a ``fileno()`` that is not where its text goes, so it is written through as before.
    """

    def __init__(self) -> None:
        if type(sys.stdout) is not io.TextIOWrapper:  # a notebook's or a live display's stand-in: through it
            raise ValueError("standard output is not the process's own stream")
        self._fd = fd = sys.stdout.fileno()
        self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
        self._append = self._regular and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        # lines kept before a write: none where sys.stdout would write each at once (a terminal, python -u
        # or PYTHONUNBUFFERED), else as many bytes as its buffer would keep
        at_once = (
            os.isatty(fd) or getattr(sys.stdout, "line_buffering", False) or getattr(sys.stdout, "write_through", False)
        )
        self._size = 0 if at_once else STDOUT_BUFFER
        self._lines: list[str] = []
        self._kept = 0
        self._encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        self._started = False

    def write(self, text: str) -> None:
        """Keep ``text`` (whole lines); write what is kept once there is enough."""
        self._lines.append(text)
        self._kept += len(text)
        if self._kept >= self._size:
            self.flush()

    def flush(self) -> None:
        """Write what is kept, whole, or raise (a regular file cut back to before)."""
        if not self._lines:
            return
        data = "".join(self._lines).encode(self._encoding, "replace")
        self._lines.clear()
        self._kept = 0
        if not self._started:
            sys.stdout.flush()  # what was printed there before comes first
            self._started = True
        fd, start = self._fd, -1
        with _naming_stdout():
            try:
                if self._regular:
                    end = os.fstat(fd).st_size
                    if self._append or os.lseek(fd, 0, os.SEEK_CUR) >= end:
                        start = end  # written at the end: a failure can be cut off
                write_all(fd, data)
            except OSError:
                if start >= 0:  # a regular file (never a broken pipe)
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                        if not self._append:
                            os.lseek(fd, start, os.SEEK_SET)
                raise


class _Stream:
    """Another text stream (a library caller's, the progress bar's wrapper) standing for a sink's
    standard output: an ``OSError`` is a ``PipelineError`` naming stdout (a ``BrokenPipeError`` itself)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        with _naming_stdout():
            self._stream.write(text)

    def flush(self) -> None:
        with _naming_stdout():
            self._stream.flush()


@contextlib.contextmanager
def _naming_stdout() -> Iterator[None]:
    """An ``OSError`` inside as a ``PipelineError`` naming stdout; a ``BrokenPipeError`` as it is (the
    reader went away, which callers end on quietly)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise PipelineError(f"cannot write stdout: {_reason(exc)}") from exc


def _stdout_lines(stream: IO[str] | None) -> _Stdout | _Stream:
    """Where a sink's lines for standard output go: its descriptor (``_Stdout``) where ``stream`` is
    ``sys.stdout`` (or None) and has one, else ``stream`` itself (a ``StringIO`` in its place)."""
    if stream is None or stream is sys.stdout:
        try:
            return _Stdout()
        except (OSError, ValueError, AttributeError):  # no descriptor (replaced by a StringIO), or a closed one
            stream = sys.stdout
    return _Stream(stream)


def write_stdout(text: str) -> None:
    """``text`` (whole lines) on standard output at once, as a stdout sink writes: on a regular file,
    whole or not at all.

    Raises:
        PipelineError: standard output refused it, naming stdout (``cannot write stdout: No space left
            on device``).
        BrokenPipeError: its reader went away.
    """
    out = _stdout_lines(None)
    out.write(text)
    out.flush()


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def _check_header(path: str, header: str) -> None:
    """Refuse a CSV file that holds another table: rows appended under its header would not be its.

    A file that is empty, not there, or not a regular file (a pipe, ``/dev/stdout``) has no header
    to check; one that edgerun wrote starts with ``header``.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return
        with open(path, "rb") as fh:
            first = fh.read(len(header) + 2).splitlines()[:1]
    except OSError:
        return  # not there yet, or unreadable: opening it for writing says why
    if first and first[0].decode("utf-8", "replace") != header:
        raise ConfigError(
            f"{path} holds another table (its first line starts {shown(first[0].decode('utf-8', 'replace'))!r}, "
            f"not edgerun's {header}): name a new file, or one that edgerun wrote"
        )


def _reason(exc: OSError) -> str:
    """An OSError's reason in words (``No space left on device``), without its errno and file name."""
    return exc.strerror or str(exc)


class CsvSink:
    """A CSV file: input, model, version, delegate, label, score, latency_ms, error.

    Fields are quoted where they need it (a comma, a quote, a line break in an
    input's name or an error's text), so every record is one CSV row. Rows
    appended to a file whose last line has no line break (a run killed, a disk
    that filled) start on a line of their own.
    """

    COLUMNS = ("input", "model", "version", "delegate", "label", "score", "latency_ms", "error")

    def __init__(self, path: str) -> None:
        import csv
        import io

        self.path = path
        _check_header(path, ",".join(self.COLUMNS))  # before anything is appended to another table
        self._file = _AppendFile(path, b"\r\n")  # the csv module's line ending
        self._row = io.StringIO()
        self._writer = csv.writer(self._row)
        if self._file.new:
            try:
                self._write(self.COLUMNS)
            except PipelineError as exc:
                self._file.close()
                raise ConfigError(str(exc)) from exc

    def publish(self, result: Result) -> None:
        """One row; classification outputs give their best label and score.

        Raises:
            PipelineError: the file cannot be written (a full disk); the run stops.
        """
        r = result.record
        if result.ok:
            label, score = top1(r["output"])
            row = [
                r["input"],
                r["model"],
                r["version"],
                r["delegate"],
                label,
                "" if score is None else score,
                r["latency_ms"],
                "",
            ]
        else:
            row = [r["input"], "", "", "", "", "", "", r["error"]]
        self._write(row)

    def _write(self, row: Any) -> None:
        self._row.seek(0)
        self._row.truncate()
        self._writer.writerow(row)
        # surrogateescape: a file name that is not UTF-8 goes in as its own bytes, as the file system has it
        self._file.write(self._row.getvalue().encode("utf-8", errors="surrogateescape"))

    def close(self) -> None:
        """fsync and close."""
        self._file.close()
