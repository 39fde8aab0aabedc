"""Rows of sensor readings: CSV and JSON Lines lines read into lists of numbers, or into the text of what
is wrong with them (``edgerun.sources.sensor`` windows them).

A CSV row is numbers separated by commas, under an optional header whose time columns (``t``, ``ts``,
``time``, ``timestamp``) are left out; a JSON Lines row is an array of numbers, or an object of channel
names to numbers, the names fixed by the first object row. The format is the one the source's suffix
names, unless the first data row plainly is the other (``_told``), as the rows arrive, nothing read ahead.
A bad row is its error text, never an exception: the source reports it and goes on.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator

import numpy as np

__all__ = [
    "MAX_ROW_CHARS",
    "channel_columns",
    "content_of",
    "csv_fields",
    "is_header",
    "read_rows",
    "separator_hint",
    "settled",
]

_TIME_COLUMNS = frozenset({"t", "ts", "time", "timestamp"})
#: Separators a CSV that is not comma-separated may use, as a message names them.
_OTHER_SEPARATORS = ((";", "';'"), ("\t", "tabs"), ("|", "'|'"), (" ", "spaces"))
#: The longest row read, in characters: a row of a thousand channels is some 20 KB. A longer one (a
#: binary file, a sender that never writes a newline) is skipped as a bad row, not held in memory whole.
MAX_ROW_CHARS = 1 << 20
#: Windows are float32: a reading beyond this (3.4e38) would become infinite in one.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _format_of(first: str) -> str:
    """The format of a source whose suffix names none (standard input), told by its ``first`` line that holds a
    row or a header: JSON Lines where it starts with ``[`` or ``{`` (an array or an object), else CSV."""
    return "jsonl" if first.startswith(("[", "{")) else "csv"


def _told(named: str | None, lines: list[str]) -> str | None:
    """The format of a source whose suffix names ``named`` (None: no suffix), told by its first ``lines`` that
    hold a row or a header; None where the next such line must tell (a ``.jsonl``'s first is a CSV header).

    The suffix holds unless the content plainly is the other format: a ``.csv`` whose first line is a JSON
    array or object is JSON Lines (a first line ``[x],[y]`` is no JSON, and stays a CSV header); a
    ``.jsonl`` whose first data row, read as CSV, is a reading (``0.1,0.2,0.3``, or ``t,x,y,z`` and a row
    under it) is CSV. A ``.jsonl`` led by a line of neither kind (a banner) stays JSON Lines, the line a
    bad row, as it always was. At most two lines are needed, and the second only after a header, which
    yields no row: nothing waits for a line it would not wait for anyway.
    """
    first = lines[0]
    if named is None:
        return _format_of(first)
    if named == "csv":
        return "jsonl" if _is_json_row(first) else "csv"
    if any(line.startswith(("[", "{")) for line in lines):
        return "jsonl"
    probe = _RowReader("csv")
    rows = [values for values in map(probe.read, lines) if values is not None]
    if not rows:
        return None
    return "csv" if isinstance(rows[0], list) else "jsonl"


def settled(named: str | None, lines: list[str]) -> str:
    """``_told`` of as many of ``lines`` as it needs; the suffix's format (or CSV) where they end before."""
    for count in range(1, len(lines) + 1):
        told = _told(named, lines[:count])
        if told is not None:
            return told
    return named or "csv"


def _is_json_row(line: str) -> bool:
    """Whether ``line`` is a JSON array or object (a row of JSON Lines, readable or not)."""
    if not line.startswith(("[", "{")):
        return False
    try:
        data = json.loads(line, parse_int=float, parse_constant=float)  # parse_int: no limit on digits
    except (ValueError, RecursionError):
        return False
    return isinstance(data, (list, dict))


def content_of(lines: Iterable[tuple[int, str | None]]) -> Iterator[tuple[int, str | None]]:
    """(line number, line stripped) of the ``lines`` that hold a row or a header: blank lines and comments
    are passed over; the line is None where it is longer than ``MAX_ROW_CHARS``."""
    for number, raw in lines:
        if raw is None:
            yield number, None
            continue
        line = raw.strip().lstrip("\ufeff") if number == 1 else raw.strip()  # a byte order mark (Excel's CSV)
        if line and not line.startswith("#"):
            yield number, line


def read_rows(content: Iterable[tuple[int, str | None]], named: str | None) -> Iterator[tuple[int, list[float] | str]]:
    """(line number, values) or (line number, error text) of ``content``, in the format ``_told`` by its first
    lines and the suffix's ``named`` one. A line held while the format is told (a header) yields no row."""
    reader: _RowReader | None = None
    held: list[tuple[int, str]] = []
    for number, line in content:
        if line is None:
            yield number, f"longer than {MAX_ROW_CHARS} characters"
            continue
        if reader is not None:  # the format is told: every row from here on
            values = reader.read(line)
            if values is not None:
                yield number, values
            continue
        held.append((number, line))
        fmt = _told(named, [text for _, text in held])
        if fmt is not None:
            reader = _RowReader(fmt)
            yield from reader.rows(held)
            held = []
    if held:  # the input ended before its format was told: the suffix's
        yield from _RowReader(named or "csv").rows(held)


class _RowReader:
    """One source's rows read in one format, with what its earlier rows fixed: a CSV's header and columns, a
    JSON Lines source's channel names, the width every row must have."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.header: list[str] | None = None
        self.keep: list[int] | None = None
        self.labels: list[str] = []  # each kept CSV field as messages name it: its column, its header name
        self.width: int | None = None
        self.names: list[str] | None = None  # a JSON Lines source's channels, from its first object row

    def rows(self, lines: list[tuple[int, str]]) -> Iterator[tuple[int, list[float] | str]]:
        """(line number, values or error text) of ``lines``; a CSV header yields none."""
        for number, line in lines:
            values = self.read(line)
            if values is not None:
                yield number, values

    def read(self, line: str) -> list[float] | str | None:
        """A line's values, or its error text; None for a CSV's header."""
        if self.fmt == "jsonl":
            values, self.names = _json_row(line, self.names)
        else:
            fields = csv_fields(line)
            if self.header is None and self.keep is None and is_header(fields):
                self.header = [f.lower() for f in fields]
                self.keep = channel_columns(self.header)
                self.labels = [_field_label(i, fields[i]) for i in self.keep]
                self.width = len(self.keep)
                return None
            if self.keep is None:
                self.keep = list(range(len(fields)))
                self.labels = [_field_label(i, "") for i in self.keep]
                self.width = len(self.keep)
            if self.header is not None and len(fields) != len(self.header):
                values = f"has {len(fields)} fields, the header has {len(self.header)}"
            elif self.header is None and len(fields) > len(self.keep):  # its extra fields would be dropped unread
                values = f"has {len(fields)} fields, earlier rows have {len(self.keep)}"
            else:
                values = _numbers([fields[i] if i < len(fields) else "" for i in self.keep], self.labels)
        if isinstance(values, list):
            self.width = self.width or len(values)
            if len(values) != self.width:
                values = f"has {len(values)} values, earlier rows have {self.width}"
        return values


def csv_fields(line: str) -> list[str]:
    """A CSV line's fields, stripped; a field in double quotes is the text inside them (``"x"``, ``"2,5"``), as
    Python's ``csv`` module, pandas and spreadsheets write one (a header in quotes, or every field)."""
    if '"' not in line:  # the common case, without the csv module's cost per row
        return [f.strip() for f in line.split(",")]
    return [f.strip() for f in next(csv.reader([line], skipinitialspace=True), [""])]


def is_header(fields: list[str]) -> bool:
    """Whether a CSV's first row of ``fields`` is its header: its first field is a name (neither empty nor a
    number), or it is empty and every other field is a name (pandas writes its index column's name empty)."""
    if fields[0] == "":
        return len(fields) > 1 and all(f != "" and not _is_number(f) for f in fields[1:])
    return not _is_number(fields[0])


def channel_columns(header: list[str]) -> list[int]:
    """The columns of a CSV ``header`` fed to the model: not the time column, nor one with no name (pandas'
    index column, or the empty last one of a logger that ends each line with a comma)."""
    return [i for i, name in enumerate(header) if name != "" and name.lower() not in _TIME_COLUMNS]


def separator_hint(first: str) -> str:
    """A note for a CSV whose first line holds no comma and another separator, or ""."""
    if "," in first:
        return ""
    for separator, name in _OTHER_SEPARATORS:
        if separator in first:
            return (
                f": its first line {_shown(first)} has {name} and no comma: the file may be separated by {name}, "
                "not commas, and a sensor CSV must be comma-separated"
            )
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _field_label(index: int, name: str) -> str:
    """A CSV field as a message names it: its 1-based column in the file, and its header name if it has one."""
    return f"field {index + 1}" + (f" ({_shown(name)})" if name else "")


def _shown(text: str) -> str:
    """``text`` quoted for a message; past 20 characters cut, with its length (not read as a shorter value)."""
    return repr(text) if len(text) <= 20 else f"{text[:20]!r}... ({len(text)} characters)"


#: How ``float()`` spells a value that is not finite (after a sign): any other text it reads as infinite
#: (``1e400``, an integer of 400 digits) is a finite number too large for a float.
_NOT_FINITE = frozenset({"inf", "infinity", "nan"})


def _numbers(fields: list[str], labels: list[str]) -> list[float] | str:
    """The fields as numbers, or the first bad one's error text (``labels`` name them)."""
    values = []
    for label, text in zip(labels, fields, strict=True):
        shown = _shown(text)
        if text == "":
            return f"{label} is missing"
        try:
            value = float(text)
        except ValueError:
            return f"{label} is {'not a decimal number' if _is_integer_literal(text) else 'not a number'}: {shown}"
        if math.isnan(value) or (math.isinf(value) and text.lstrip("+-").lower() in _NOT_FINITE):
            return f"{label} is not finite: {shown}"
        if abs(value) > _FLOAT32_MAX:  # 1e39, or past any float: 1e400 (float() gives inf)
            return f"{label} is beyond float32's range: {shown}"
        values.append(value)
    return values


def _is_integer_literal(text: str) -> bool:
    """Whether ``text`` is an integer in another base (``0x10``, ``0o17``, ``0b101``): a number, but not decimal."""
    try:
        int(text, 0)
    except ValueError:
        return False
    return True


def _json_row(line: str, names: list[str] | None) -> tuple[list[float] | str, list[str] | None]:
    """(values or error text, channel names): an object row is read by the names of the first good one."""
    try:
        # Integers are read as floats: an int() of over 4,300 digits is refused (a ValueError, which
        # is no reason to call the line invalid JSON), and a float of one is infinite, hence too large.
        data = json.loads(line, parse_int=float, parse_constant=_NotFinite)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested deeper than Python's stack
        return "not valid JSON", names
    row_names = names
    if isinstance(data, dict):
        fields = {k: v for k, v in data.items() if k.lower() not in _TIME_COLUMNS}
        if names is None:
            row_names = list(fields)  # the channels, once this row proves good
        else:
            missing = [n for n in names if n not in fields]
            if missing:
                return f"has no {missing[0]!r}, which the first object row has", names
            extra = [n for n in fields if n not in names]
            if extra:
                return f"has {extra[0]!r}, which the first object row does not", names
        data = [fields[n] for n in row_names or []]
    if not isinstance(data, list) or not data:
        return "not a JSON array or object of numbers", names
    if not all(isinstance(v, float) for v in data):  # numbers are floats here; true, false, null, strings are not
        return "has a value that is not a number", names
    if any(isinstance(v, _NotFinite) for v in data):
        return "has a value that is not finite", names
    if not all(abs(v) <= _FLOAT32_MAX for v in data):  # 1e39, or past any float: 1e400 is read as inf
        return "has a value beyond float32's range", names
    return [float(v) for v in data], row_names


class _NotFinite(float):
    """A JSON Lines ``NaN``, ``Infinity`` or ``-Infinity``: written as not finite, where ``1e400``, which
    ``json`` also reads as infinite, is a finite number beyond float32's range."""
