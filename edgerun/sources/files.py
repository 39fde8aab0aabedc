"""Image and array files: a file, a glob, or a directory (walked, sorted, stable order)."""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Iterator, Sequence

from edgerun.errors import InputError
from edgerun.globbing import glob_files
from edgerun.inputs import InputRef, expand_inputs, read_input
from edgerun.sources.base import Frame

__all__ = ["FileSource"]


class FileSource:
    """Reads each file's bytes (images) or array (``.npy``); decoding happens downstream.

    A path that cannot be read yields a frame carrying the error, so the run
    reports it and goes on. ``skip`` names inputs to leave out, by the path their
    frames carry (``Frame.source_id``): those an earlier run already delivered
    (``edgerun predict --resume``, a daemon pipeline retried after a failure). Paths
    are compared by what they name, made absolute from the current directory and
    normalised without resolving links: ``imgs/a.png``, ``./imgs/a.png`` and
    ``imgs//a.png`` are one input, to skip and to read once.
    """

    live = False
    decoded = False
    dropped = 0

    def __init__(self, paths: Sequence[str], skip: frozenset[str] = frozenset()) -> None:
        self.uri = " ".join(paths)
        #: every input to read, in order (directories walked once, here), without the skipped ones, each once
        #: (``'imgs/**'`` matches the folder and every file in it; a file named beside its folder is in both)
        self.refs: list[InputRef] = []
        #: how many of these inputs ``skip`` left out (not how many it names: a file resumed from another
        #: folder names relative paths that are not these)
        self.skipped = 0
        done = {os.path.abspath(path) for path in skip}
        seen: set[str] = set()
        for ref in expand_inputs(self.expand(paths)):
            if (key := os.path.abspath(ref.path)) in seen:
                continue
            seen.add(key)
            if key in done:
                self.skipped += 1
            else:
                self.refs.append(ref)
        self._closed = False

    @staticmethod
    def expand(paths: Sequence[str]) -> list[str]:
        """Globs expanded (sorted, ``**`` entering no linked folder: see ``edgerun.globbing``); other
        paths kept for ``expand_inputs``; a glob that matches nothing kept as it is, to be reported."""
        out: list[str] = []
        for p in paths:
            if glob.has_magic(p):
                out.extend(glob_files(p) or [p])
            else:
                out.append(p)
        return out

    def frames(self) -> Iterator[Frame]:
        """Every input file in order; unreadable ones as error frames."""
        for index, ref in enumerate(self.refs):
            if self._closed:
                return
            if ref.error is not None:
                yield Frame(None, time.time(), ref.path, index, error=ref.error)
            else:
                try:
                    yield Frame(read_input(ref.path, stopped=self._stopped), time.time(), ref.path, index)
                except InputError as exc:
                    if self._closed:  # a pipe's read ends so when stopped: the run is ending, nothing to report
                        return
                    yield Frame(None, time.time(), ref.path, index, error=str(exc))

    def _stopped(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop after the current file; a named pipe or ``/dev/stdin`` being read (its writer quiet, or none
        yet) within ``POLL_S`` (0.2 s), its descriptor closed (see ``edgerun.inputs``)."""
        self._closed = True
