"""Text sinks: a table or JSON Lines on standard output, JSON Lines or CSV files."""

from __future__ import annotations

import contextlib
import math
import os
import stat
import sys
from typing import IO, Any

from edgerun.errors import ConfigError, PipelineError, shown
from edgerun.sinks.base import Result

__all__ = ["CsvSink", "JsonlSink", "TableSink", "top1"]


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
    """One human-readable line per result on standard output (errors go to stderr via the run)."""

    inline = True  # a formatted line: cheap enough for the inference thread (see Sink)

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout

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
        self.inline = path is None  # standard output; a file is flushed per record, off the inference thread
        if path is None:
            self._stream: IO[str] = sys.stdout
        else:
            try:
                self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115
                if not _ends_a_line(self._stream, path):
                    self._stream.write("\n")  # records start on a line of their own, whatever the file held
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {_reason(exc)}") from exc

    def publish(self, result: Result) -> None:
        """Write the record as one line.

        Raises:
            PipelineError: the file cannot be written (a full disk); the run stops.
        """
        try:
            line = self._dumps(result.record, separators=(", ", ": "), allow_nan=False)
        except ValueError:  # NaN or an infinity somewhere in the output
            line = self._dumps(_finite(result.record), separators=(", ", ": "))
        if self.path is None:
            self._stream.write(line + "\n")  # a reader gone away is a BrokenPipeError, which callers end on
            return
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except OSError as exc:
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc

    def close(self) -> None:
        """Flush, and for a file fsync and close it."""
        if self.path is None:
            self._stream.flush()
            return
        try:
            _flush_and_close(self._stream)
        except OSError as exc:
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinite float, however deeply nested, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _size(stream: IO[str]) -> int | None:
    """The size of a file opened for appending; None for a pipe or a device, which has none."""
    return stream.tell() if stat.S_ISREG(os.fstat(stream.fileno()).st_mode) else None


def _ends_a_line(stream: IO[str], path: str) -> bool:
    """Whether ``path``, opened for appending as ``stream``, is empty or its last byte ends a line; true for a
    pipe or a device, which has no last byte to look at."""
    if not _size(stream):
        return True
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _flush_and_close(stream: IO[str]) -> None:
    """Flush, fsync (a regular file: a pipe or a device cannot be) and close ``stream``; closed whatever fails."""
    try:
        stream.flush()
        if stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            os.fsync(stream.fileno())
    finally:
        with contextlib.suppress(OSError):  # the flush above failed the same way, and that is raised
            stream.close()


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
        self.path = path
        try:
            # surrogateescape: a file name that is not UTF-8 goes in as its own bytes, as the file system has it
            self._file = open(path, "a", newline="", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
            new = not _size(self._file)
            import csv

            self._writer = csv.writer(self._file)
            if not _ends_a_line(self._file, path):
                self._file.write("\r\n")  # the csv module's line ending
            if new:
                self._writer.writerow(self.COLUMNS)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {_reason(exc)}") from exc

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
        try:
            self._writer.writerow(row)
            self._file.flush()
        except OSError as exc:
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc

    def close(self) -> None:
        """Flush, fsync and close."""
        try:
            _flush_and_close(self._file)
        except OSError as exc:
            raise PipelineError(f"cannot write {self.path}: {_reason(exc)}") from exc
