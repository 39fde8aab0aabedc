"""Input files: expanding paths and directories, reading images and arrays.

Reading is separate from decoding: an image file is returned as its encoded
bytes (the model decides gray or colour), an ``.npy`` file as an array loaded
with ``allow_pickle=False`` (arrays from outside are untrusted data).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerun.errors import InputError
from edgerun.processing.image import IMAGE_SUFFIXES

__all__ = ["InputRef", "expand_inputs", "read_input", "USABLE_SUFFIXES"]

USABLE_SUFFIXES = IMAGE_SUFFIXES | {".npy"}


@dataclass(frozen=True)
class InputRef:
    """One input to process, or the reason a given path yields none."""

    path: str
    error: str | None = None


def expand_inputs(paths: Iterable[str]) -> Iterator[InputRef]:
    """Files given directly, and the usable files under directories (walked, sorted).

    A missing path or a directory without usable files yields an ``InputRef``
    carrying the error, so the caller reports it and goes on with the rest.
    """
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                (p for p in path.rglob("*") if p.suffix.lower() in USABLE_SUFFIXES and p.is_file()),
                key=lambda p: p.as_posix(),
            )
            if not found:
                kinds = ", ".join(sorted(USABLE_SUFFIXES))
                yield InputRef(raw, f"{raw}: no usable files in directory (looked for {kinds})")
            for p in found:
                yield InputRef(str(p))
        elif path.exists():
            yield InputRef(raw)
        else:
            yield InputRef(raw, f"{raw}: no such file or directory")


def read_input(path: Path) -> bytes | np.ndarray:
    """Read one input file: ``.npy`` as an array, anything else as encoded image bytes."""
    try:
        if path.suffix.lower() == ".npy":
            try:
                return np.load(path, allow_pickle=False)
            except ValueError as exc:
                raise InputError(f"{path}: not a plain numeric .npy array ({str(exc).splitlines()[0]})") from exc
            except EOFError:
                raise InputError(f"{path}: empty or truncated .npy file") from None
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
