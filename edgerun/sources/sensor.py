"""Numeric sensor streams: CSV or JSON Lines files, or standard input, cut into windows.

Each row is one reading of one or more channels. A CSV may have a header; a
column named ``t``, ``ts``, ``time`` or ``timestamp`` is taken as the time and
not fed to the model. A JSON Lines row is an array of numbers or an object of
named numbers. Windows of ``window`` rows start every ``hop`` rows and are
yielded as float32 arrays of shape ``[window, channels]``.

A row with a missing or non-numeric field is reported (yielded as an error
frame naming its line, so the run counts it and its consumer reports it: the
CLI prints it, the daemon logs it) and skipped; the run goes on. An input that
ends before it filled one window (an empty file, a header alone, fewer rows
than the window) is a ``SourceError``: nothing was classified, and the run must
not pass for a success.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgerun.errors import ConfigError, SourceError
from edgerun.sources.base import Frame

__all__ = ["SENSOR_SUFFIXES", "SensorSource", "is_sensor_spec", "window_for"]

SENSOR_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})
_TIME_COLUMNS = frozenset({"t", "ts", "time", "timestamp"})


def is_sensor_spec(spec: str) -> bool:
    """Whether a source string names a sensor source (a CSV or JSON Lines file, or ``-`` for stdin)."""
    return spec in ("-", "stdin") or Path(spec).suffix.lower() in SENSOR_SUFFIXES


def window_for(model: Any, requested: int | None) -> int | None:
    """The window a sensor source must cut for ``model``: its input's row count, checked against ``requested``.

    A model whose first input is ``[batch, rows, ...]`` takes windows of ``rows``; a
    requested window that differs is a ``ConfigError`` naming both, raised before
    anything runs (``edgerun run --window``, a daemon pipeline's ``window:``).
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
        if not self._stdin and not Path(path).is_file():
            raise SourceError(f"sensor file not found: {path}")
        suffix = Path(path).suffix.lower()
        self._format = fmt or ("jsonl" if suffix in (".jsonl", ".ndjson") else "csv")
        self._closed = False
        self.bad_rows = 0

    def _lines(self) -> Iterator[tuple[int, str]]:
        stream: IO[str] = sys.stdin if self._stdin else open(self.uri, encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            for number, line in enumerate(stream, start=1):
                if self._closed:
                    return
                yield number, line
        finally:
            if not self._stdin:
                stream.close()

    def _rows(self) -> Iterator[tuple[int, list[float] | str]]:
        """(line number, values) or (line number, error text)."""
        header: list[str] | None = None
        keep: list[int] | None = None
        width: int | None = None
        for number, raw in self._lines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if self._format == "jsonl":
                values = _json_row(line)
            else:
                fields = [f.strip() for f in line.split(",")]
                if header is None and keep is None and not _is_number(fields[0]) and fields[0] != "":
                    header = [f.lower() for f in fields]
                    keep = [i for i, name in enumerate(header) if name not in _TIME_COLUMNS]
                    width = len(keep)
                    continue
                if keep is None:
                    keep = list(range(len(fields)))
                    width = len(keep)
                if header is not None and len(fields) != len(header):
                    values = f"has {len(fields)} fields, the header has {len(header)}"
                else:
                    values = _numbers([fields[i] if i < len(fields) else "" for i in keep])
            if isinstance(values, list):
                width = width or len(values)
                if len(values) != width:
                    values = f"has {len(values)} values, earlier rows have {width}"
            yield number, values

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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numbers(fields: list[str]) -> list[float] | str:
    values = []
    for i, text in enumerate(fields):
        if text == "":
            return f"field {i + 1} is missing"
        try:
            value = float(text)
        except ValueError:
            return f"field {i + 1} is not a number: {text[:20]!r}"
        if not math.isfinite(value):
            return f"field {i + 1} is not finite: {text[:20]!r}"
        values.append(value)
    return values


def _json_row(line: str) -> list[float] | str:
    try:
        data = json.loads(line)
    except ValueError:
        return "not valid JSON"
    if isinstance(data, dict):
        data = [v for k, v in data.items() if k.lower() not in _TIME_COLUMNS]
    if not isinstance(data, list) or not data:
        return "not a JSON array or object of numbers"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        return "has a value that is not a number"
    if not all(math.isfinite(v) for v in data):
        return "has a value that is not finite"
    return [float(v) for v in data]
