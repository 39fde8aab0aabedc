"""Audit of the model store's seeding on a full disk (a real tmpfs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import edgerun
from edgerun.card import ModelCard
from edgerun.errors import EdgerunError
from edgerun.model import Model
from edgerun.ota.serving import serve_from_store
from edgerun.ota.store import ModelStore
from tests.conftest import DIGITS


def load(path: Path, card: ModelCard | None) -> Model:
    return edgerun.load(path, card=card)


def test_a_first_start_on_a_full_disk_refuses_in_one_line_and_leaves_the_store_empty(
    small_disk: Callable[[int], Path],
) -> None:
    store = ModelStore(small_disk(64 * 1024) / "models")  # the model is 120 KB
    with pytest.raises(EdgerunError, match=r"cannot put digits .* in the model store .*No space left on device"):
        serve_from_store(DIGITS / "digits_fp32.onnx", store, load)
    assert store.active("digits") is None
    assert store.versions("digits") == []
    assert list((store.root / "digits" / "versions").iterdir()) == []  # no half-built folder left
