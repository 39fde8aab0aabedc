"""edgerun.files on a real filesystem that fills up."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from edgerun.files import atomic_write


def test_an_atomic_write_the_disk_refuses_keeps_the_old_file_and_leaves_no_temporary_file(
    small_disk: Callable[[int], Path],
) -> None:
    disk = small_disk(256 * 1024)
    target = disk / "active.json"
    atomic_write(target, b'{"version": "1.0.0"}')
    for attempt in range(3):  # as a retried write does
        with pytest.raises(OSError) as refused:
            atomic_write(target, b"x" * (1024 * 1024))
        assert refused.value.errno == errno.ENOSPC, attempt
    assert target.read_bytes() == b'{"version": "1.0.0"}'
    assert sorted(p.name for p in disk.iterdir()) == ["active.json"]
