"""Glob patterns: expanding a source's pattern, and telling whether a pattern lists a file without listing any.

``glob_files`` is ``glob.glob(pattern, recursive=True)``, sorted and without duplicates, with one
difference: ``**`` does not enter a linked folder, the rule the directory walk has
(``edgerun.inputs``) and Python 3.13's ``Path.glob`` has by default (``recurse_symlinks=False``).
Python's glob follows links under ``**``, so a tree with a symlink loop (``data/loop -> ..``) is
listed for ever (with two loops, some 2**40 paths, up to the 40 links a path may cross).
``glob_lists`` decides whether ``glob_files`` would list a given file from the two strings, reading
only the file's own path (links on it, whether it is a folder), never a folder's entries: a daemon
config is checked against its sinks this way, at load, without walking ``/data/**``.

Invariants:

- ``**`` (a whole component) stands for zero or more real folders: the folder it starts from is
  entered even when it is a link (it was named, or matched by another component), the folders below
  it only when they are not links. Ending the pattern, it gives the names in those folders, a link
  to a file as that file, but not a link to a folder: ``data/**`` gives what walking ``data`` finds,
  plus the folders on the way (a source walks a folder it is given, so a listed link would be).
- Every other component is matched as glob matches it: a wildcard (``*``, ``?``, ``[ab]``, or
  ``a**b``, which is ``a*b``) matches any name in its folder, links to folders included, and glob
  goes through them; a literal component is joined as it is, and the system resolves it
  (``link/..`` is the parent of the link's target).
- A hidden name (``.x``) is matched only by a component that starts with a dot, never by ``**``; a
  trailing ``**`` also gives its folder itself, with a trailing separator (``data/``); a relative
  pattern gives relative paths, taken from the working folder.
- Only ``str`` patterns; nothing here is specific to Windows drives.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Iterable, Iterator

__all__ = ["glob_files", "glob_lists"]

log = logging.getLogger(__name__)


def glob_files(pattern: str) -> list[str]:
    """The paths ``pattern`` names, sorted, each once: glob's, but ``**`` enters no linked folder.

    Args:
        pattern: a path whose components may hold wildcards; ``**`` alone as a component stands
            for any number of folders (and, at the end, for every name below them).

    Returns:
        What ``sorted(set(glob.glob(pattern, recursive=True)))`` gives on a tree without links,
        spelled the same way (relative or absolute, ``d/`` for a folder a trailing ``**`` or ``/``
        matched); ends after one pass over the tree whatever links it holds.
    """
    return sorted({path for path in _expand(pattern, folders_only=False) if path})  # "" is `**` at the top


def _expand(pattern: str, *, folders_only: bool) -> Iterator[str]:
    """What ``pattern`` names, in glob's spelling; only folders when ``folders_only`` (a pattern's
    leading part, which later components look into). Glob's own recursion, on the last component."""
    folder, last = os.path.split(pattern)
    if not glob.has_magic(pattern):
        if os.path.lexists(pattern) if last else os.path.isdir(folder):  # `d/`: a folder only
            yield pattern
        return
    if folder and folder != pattern and glob.has_magic(folder):
        folders: Iterable[str] = _expand(folder, folders_only=True)
    else:
        folders = [folder]  # "" for a pattern with no folder: the working folder
    for where in folders:
        for name in _names_in(where, last, folders_only=folders_only):
            yield os.path.join(where, name)


def _names_in(folder: str, part: str, *, folders_only: bool) -> Iterator[str]:
    """The names (paths relative to ``folder``, for ``**``) that one pattern component matches in it."""
    if part == "**":
        yield ""  # no folder at all: the folder itself (`d/` once joined)
        yield from _below(folder, folders_only=folders_only)
    elif glob.has_magic(part):
        names = _listed(folder, folders_only=folders_only)
        if not part.startswith("."):
            names = [name for name in names if not name.startswith(".")]
        yield from fnmatch.filter(names, part)
    elif os.path.lexists(os.path.join(folder, part)) if part else os.path.isdir(folder):
        yield part


def _listed(folder: str, *, folders_only: bool) -> list[str]:
    """The names in ``folder`` (only folders, links to them included, when ``folders_only``); none
    when it cannot be listed (missing, a file, unreadable), as glob."""
    names: list[str] = []
    try:
        with os.scandir(folder or os.curdir) as entries:
            for entry in entries:
                try:
                    if not folders_only or entry.is_dir():
                        names.append(entry.name)
                except OSError:
                    continue
    except OSError:
        pass
    return names


def _below(folder: str, *, folders_only: bool) -> Iterator[str]:
    """Every name under ``folder`` at any depth, relative to it, hidden ones left out; only folders
    when ``folders_only``. Real folders only: a link to a folder is neither entered nor given, so a
    symlink loop ends; a link to a file is given, as that file."""
    try:
        with os.scandir(folder or os.curdir) as entries:
            found = list(entries)
    except OSError:
        return
    for entry in found:
        if entry.name.startswith("."):
            continue
        try:
            real_folder = entry.is_dir(follow_symlinks=False)
            if entry.is_symlink() and entry.is_dir():
                log.info("'**' does not enter %s, a link to a folder (name it in the pattern to read it)", entry.path)
                continue
            if folders_only and not real_folder:
                continue
        except OSError:
            continue
        yield entry.name
        if real_folder:
            for name in _below(os.path.join(folder, entry.name), folders_only=folders_only):
                yield os.path.join(entry.name, name)


def glob_lists(path: str, pattern: str, *, once_made: bool = False) -> bool:
    """Whether ``glob_files(pattern)`` lists the existing ``path`` (or another name of the same file),
    decided without listing any folder; with ``once_made``, also whether it will list ``path`` once the
    folders on the way that are not there yet are made (a daemon waits for a source folder, and makes a
    ``DIR/`` sink with its folders): the names below a missing folder are then compared as written, as
    nothing there is a link yet.

    The pattern's literal leading part (the components before the first wildcard) is resolved as the
    system resolves it (``link/../out/*.jsonl`` starts from the parent of the link's target), and
    ``path`` is matched as written and with each leading part of it resolved, so a file reached
    through a linked folder on either side is found. A relative pattern or path is taken from the
    working folder; when that folder was deleted, a relative one names nothing (glob lists nothing),
    while an absolute pattern and path are still compared.

    Not seen: a file that a wildcard reaches through a link while ``path`` names it by its target
    (``*/x.jsonl`` through ``d/link -> /elsewhere``, with ``path`` ``/elsewhere/x.jsonl``), and any
    file of a pattern with ``..`` after a wildcard (where it leads depends on what the wildcard found).

    Args:
        path: a file that exists (a sink), relative to the working folder or absolute.
        pattern: a glob source, as ``glob_files`` takes it.

    Returns:
        True when the pattern lists ``path`` under some name; False when it does not, and in the
        cases not seen above.
    """
    if "\0" in path or "\0" in pattern:  # no file name holds one; os calls would raise
        return False
    cwd = _working_folder()
    if cwd is None and not (os.path.isabs(pattern) and os.path.isabs(path)):
        return False
    given = pattern.split(os.sep)  # the working folder's name is no pattern, whatever it holds (`run[1]`)
    if given[-1] in ("", ".", "..") and not os.path.isdir(path):  # `*/`, `*/.`: folders only
        return False
    first = next((i for i, part in enumerate(given) if glob.has_magic(part)), len(given))
    rest = [part for part in given[first:] if part not in ("", ".")]
    if ".." in rest:
        return False
    literal = os.sep.join(given[:first]) or (os.sep if pattern.startswith(os.sep) else "")  # `/**`: the root
    if not once_made and not os.path.isdir(os.path.join(cwd or os.sep, literal)):  # nothing through a missing folder
        return False
    start = os.path.realpath(os.path.join(cwd or os.sep, literal))
    folder = [name for name in start.split(os.sep) if name]  # names, compared as they are
    spellings = _spellings(os.path.join(cwd or os.sep, path))
    return any(names[: len(folder)] == folder and _matches(names, len(folder), rest) for names in spellings)


def _working_folder() -> str | None:
    """The working folder, or None when it was deleted (``os.getcwd`` raises then)."""
    try:
        return os.getcwd()
    except OSError:
        return None


def _spellings(path: str) -> Iterator[list[str]]:
    """The absolute ``path``'s names as written and with each leading part resolved (links followed,
    ``..`` taken where it leads): from ``a/link/b`` also ``target/b``. Only true names of the file:
    a spelling that would still hold ``..`` is left out."""
    names = [name for name in path.split(os.sep) if name not in ("", ".")]
    seen: set[tuple[str, ...]] = set()
    for cut in range(len(names) + 1):
        if ".." in names[cut:]:
            continue
        head = os.path.realpath(os.sep + os.sep.join(names[:cut])) if cut else os.sep
        spelling = [name for name in head.split(os.sep) if name] + names[cut:]
        if tuple(spelling) not in seen:
            seen.add(tuple(spelling))
            yield spelling


def _matches(names: list[str], start: int, parts: list[str]) -> bool:
    """Whether the absolute path ``names`` is one that ``parts`` (pattern components, no ``.`` or
    ``..``) list from the folder ``names[:start]``: a match over the strings, with one look at the
    filesystem per name ``**`` takes (it takes no link to a folder), and at whether a path ``**``
    ends on is a folder."""
    linked: dict[tuple[int, bool], bool] = {}  # whether names[:k] is a link `**` cannot take

    def taken_as_link(k: int, *, at_end: bool) -> bool:
        if (k, at_end) not in linked:
            taken = os.sep + os.sep.join(names[:k])
            linked[k, at_end] = os.path.islink(taken) and (not at_end or os.path.isdir(taken))
        return linked[k, at_end]

    reach = [j == start for j in range(len(names) + 1)]  # reach[j]: the parts so far match names[start:j]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        after = [False] * (len(names) + 1)
        for j in (j for j in range(len(names) + 1) if reach[j]):
            if part == "**":
                if not last or j < len(names) or os.path.isdir(os.sep + os.sep.join(names)):
                    after[j] = True  # no folder at all: at the end, only the folder itself, as `d/`
                k = j
                while k < len(names) and not names[k].startswith("."):
                    k += 1
                    if taken_as_link(k, at_end=last and k == len(names)):
                        break  # a linked folder: `**` neither enters nor gives it (a linked file, at the end, it gives)
                    after[k] = True
            elif j < len(names) and _name_matches(names[j], part):
                after[j + 1] = True
        reach = after
    return reach[-1]


def _name_matches(name: str, part: str) -> bool:
    """One path component against one pattern component, as glob matches them."""
    if not glob.has_magic(part):
        return name == part
    if name.startswith(".") and not part.startswith("."):
        return False
    return fnmatch.fnmatchcase(name, part)
