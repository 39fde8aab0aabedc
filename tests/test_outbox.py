"""The outbox: numbering, durability across kill -9, order, eviction."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgerun.errors import ConfigError
from edgerun.sync.outbox import Outbox
from tests.conftest import ROOT


def test_seq_grows_by_one_per_stream_and_survives_a_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert [box.put("metrics", "t/m", {"a": i}) for i in range(3)] == [1, 2, 3]
    assert box.put("results/digits", "t/r", {}) == 1
    epoch = box.epoch
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert again.epoch == epoch
    assert again.put("metrics", "t/m", {}) == 4
    payloads = [json.loads(p.payload) for p in again.pending()]
    assert [(p["seq"], p["epoch"]) for p in payloads] == [(1, epoch), (2, epoch), (3, epoch), (1, epoch), (4, epoch)]


def test_a_wiped_state_directory_starts_a_new_epoch(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "a.sqlite")
    second = Outbox(tmp_path / "b.sqlite")
    assert first.epoch != second.epoch and len(first.epoch) == 16


def test_records_leave_only_when_acknowledged_and_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.put_many([("metrics", "t", {"i": i}, 1) for i in range(10)])
    pending = box.pending(limit=4)
    assert [p.seq for p in pending] == [1, 2, 3, 4]
    box.ack([pending[0].id, pending[1].id])
    assert [p.seq for p in box.pending()] == [3, 4, 5, 6, 7, 8, 9, 10]
    assert [p.seq for p in box.pending(after_id=pending[3].id)] == [5, 6, 7, 8, 9, 10]
    assert box.stats().records == 8


def test_payloads_are_strict_json_with_the_same_values(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    record = {"source": "caf\u00e9.jpg", "output": [{"label": "3", "score": 4e-06}], "temp_c": float("nan")}
    box.put("results/digits", "t", dict(record))
    payload = box.pending()[0].payload

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    got = json.loads(payload, parse_constant=refuse)
    assert got["source"] == "caf\u00e9.jpg"
    assert got["output"] == record["output"]
    assert got["temp_c"] is None  # JSON has no NaN: null, which every receiver can parse
    assert (got["seq"], got["epoch"]) == (1, box.epoch)


def test_the_size_bound_evicts_the_oldest_and_counts_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10_000)
    for i in range(200):
        box.put("metrics", "t", {"i": i, "pad": "x" * 100})
    stats = box.stats()
    assert stats.bytes <= 10_000 and stats.evicted > 0
    assert stats.records + stats.evicted == 200
    remaining = [p.seq for p in box.pending(limit=1000)]
    assert remaining == list(range(200 - len(remaining) + 1, 201))  # the newest survive, in order
    reported: list[int] = []
    box.put_many([("metrics", "t", {}, 1)], fill=lambda r: reported.append(box.evicted_total()))
    assert reported == [stats.evicted]


def test_an_unusable_outbox_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "o.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="unusable"):
        Outbox(bad)
    with pytest.raises(ConfigError, match="at least 4096"):
        Outbox(tmp_path / "x.sqlite", max_bytes=10)


WRITER = """
import sys, time
from edgerun.sync.outbox import Outbox
box = Outbox(sys.argv[1])
i = 0
while True:
    seqs = box.put_many([("metrics", "t", {"i": i + k}, 1) for k in range(5)])
    print(seqs[-1], flush=True)
    i += 5
"""


def test_kill_9_loses_nothing_that_was_handed_to_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and last < 2000:
        line = proc.stdout.readline()
        if not line:
            break
        last = int(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last >= 2000
    box = Outbox(path)
    seqs = [p.seq for p in box.pending(limit=1_000_000)]
    assert seqs[:last] == list(range(1, last + 1))  # every acknowledged put is there, in order, once
    assert seqs == list(range(1, len(seqs) + 1))  # and nothing half-written
