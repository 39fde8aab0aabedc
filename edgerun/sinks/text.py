"""Text sinks: a table or JSON Lines on standard output, JSON Lines or CSV files."""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from edgerun.errors import ConfigError
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
        self._stream.write(f"{record['input']:<40} {text}   {record['latency_ms']:.2f} ms\n")

    def close(self) -> None:
        """Flush standard output."""
        self._stream.flush()


class JsonlSink:
    """One JSON object per line, to standard output or appended to a file.

    A file is flushed after every record, so a killed run loses at most the
    line being written; ``--resume`` reads it back.
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
                if self._stream.tell() > 0 and not _ends_a_line(path):
                    self._stream.write("\n")  # records start on a line of their own, whatever the file held
            except OSError as exc:
                raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc

    def publish(self, result: Result) -> None:
        """Write the record as one line."""
        self._stream.write(self._dumps(result.record, separators=(", ", ": ")) + "\n")
        if self.path is not None:
            self._stream.flush()

    def close(self) -> None:
        """Flush, and for a file fsync and close it."""
        self._stream.flush()
        if self.path is not None:
            os.fsync(self._stream.fileno())
            self._stream.close()


def _ends_a_line(path: str) -> bool:
    """Whether a non-empty file's last byte ends a line."""
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


class CsvSink:
    """A CSV file: input, model, version, delegate, label, score, latency_ms, error."""

    COLUMNS = ("input", "model", "version", "delegate", "label", "score", "latency_ms", "error")

    def __init__(self, path: str) -> None:
        self.path = path
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        try:
            # surrogateescape: a file name that is not UTF-8 goes in as its own bytes, as the file system has it
            self._file = open(path, "a", newline="", encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc
        import csv

        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(self.COLUMNS)

    def publish(self, result: Result) -> None:
        """One row; classification outputs give their best label and score."""
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
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
