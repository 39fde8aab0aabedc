"""Eviction costs what it deletes, not the outbox size; the daemon tells the results skipped over its rate limit."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from edgerun.sync.outbox import Outbox
from tests.conftest import ROOT, SAMPLES, Broker
from tests.test_daemon import http
from tests.test_sync import wait_until

BOUND = 200_000


def test_eviction_reads_and_deletes_exactly_the_oldest_records_down_to_90_percent_and_counts_them(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_bytes=BOUND)
    # nearly full: 12 large records first (the oldest), then ~4,400 small ones
    box.put_many([("metrics", "t/m", {"pad": "x" * 2000}, 1) for _ in range(12)])
    box.put_many([("results/digits", "t/r", {}, 1) for _ in range(3500)])
    while box.stats().bytes < BOUND - 2000:
        box.put_many([("results/digits", "t/r", {}, 1) for _ in range(10)])
    before = [(p.id, len(p.payload)) for p in box.pending(limit=100_000)]
    queued = box.stats().bytes
    assert box.evicted_total() == 0 and queued == sum(size for _, size in before) and len(before) > 4000

    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # go on

    reported: list[int] = []
    # SQLite calls ``step`` at every instruction of its virtual machine: a row read takes several
    box._db.set_progress_handler(step, 1)
    box.put_many(
        [("metrics", "t/m", {"pad": "y" * (BOUND - queued + 50)}, 1)],
        fill=lambda r: reported.append(box.evicted_total()),
    )
    box._db.set_progress_handler(None, 1)

    after = box.pending(limit=100_000)
    # what eviction had to fit: the queue, the new record and the 64 bytes kept for what ``fill`` adds
    # (this ``fill`` adds nothing, so the stored payload is the one eviction measured)
    total, expected = queued + len(after[-1].payload) + 64, 0
    while total > BOUND * 0.9:
        total -= before[expected][1]
        expected += 1
    assert 0 < expected < 20
    assert [p.id for p in after[:-1]] == [rid for rid, _ in before[expected:]]  # exactly the oldest went
    assert box.evicted_total() == expected and reported == [expected]  # counted, in the same transaction
    assert len(box) == len(before) - expected + 1 == box.stats().records
    assert box.stats().bytes <= BOUND * 0.9
    # the cost is that of the few records evicted: reading all ~4,400 rows takes over 20,000 steps
    assert steps[0] < len(before) // 4, f"{steps[0]} SQLite steps to evict {expected} of {len(before)} records"
    box.close()
    again = Outbox(tmp_path / "o.sqlite", max_bytes=BOUND)  # committed: the count survives a reopen
    assert again.evicted_total() == expected and len(again) == len(before) - expected + 1
    again.close()


def test_the_daemon_logs_and_shows_the_results_it_skipped_over_its_rate_limit(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgerun.config import parse_config
    from edgerun.daemon import Daemon

    images = tmp_path / "images"
    images.mkdir()
    for png in sorted(SAMPLES.glob("*.png")):
        shutil.copy(png, images)
    frames = len(list(images.iterdir()))
    config = parse_config(
        {
            "device": {"id": "skip-dev"},
            "models": {"digits": {"path": str(ROOT / "models/digits/digits_int8.onnx"), "publish_results": True}},
            "pipelines": {"imgs": {"source": str(images), "model": "digits"}},
            # one result per 100 s: the bucket starts with one token, so the first result goes and the rest are skipped
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker.port}", "results_max_per_s": 0.01},
            "api": {"port": 0},
            "state_dir": str(tmp_path / "state"),
        },
        "test",
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        wait_until(lambda: daemon.runners["imgs"].state == "finished", 30, "the pipeline to finish")
        code, status = http(daemon.api_port, "/v1/status")
        assert code == 200 and status["results_skipped"] == {"imgs": frames - 1}
        assert status["pipelines"] == {"imgs": "finished"}  # the existing shape is kept
    finally:
        daemon.stop()
    line = re.compile(
        r"pipeline imgs: (\d+) result\(s\) skipped over the results rate limit \(0\.01 per second\) "
        r"since the last such line, (\d+) in all"
    )
    said = [m for r in caplog.records if r.levelno == logging.INFO and (m := line.fullmatch(r.getMessage()))]
    # the first skip is said at once, the rest when the source ended: not one line per result
    assert [(int(m[1]), int(m[2])) for m in said] == [(1, 1), (frames - 2, frames - 1)]


def test_a_retried_pipeline_s_new_results_sink_counts_on_and_does_not_say_its_skips_again_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A source that fails and reopens gets a new sink per run: it carries the count on, and the
    once-a-minute line is not said again at the new sink's first skip."""
    import time

    import edgerun
    from edgerun.sinks.base import Result, result_record
    from edgerun.sources.base import Frame
    from edgerun.sync.publish import ResultsSink
    from edgerun.sync.topics import Topics

    outbox = Outbox(tmp_path / "outbox.sqlite")
    with edgerun.load(ROOT / "models/digits/digits_int8.onnx") as model:
        prediction = model.predict(SAMPLES / "digit_3.png")
        result = Result(Frame(None, time.time(), "cam#0", 0), result_record(model, "cam#0", prediction.output, 1.0))

    def sink() -> ResultsSink:
        return ResultsSink(outbox, None, Topics("edgerun", "dev"), max_per_s=0.01, label="pipeline cam")

    first = sink()
    for _ in range(3):
        first.publish(result)  # the bucket starts with one token: the first goes, the other two are skipped
    first.close()
    second = sink()
    second.carry_on(first)
    for _ in range(2):
        second.publish(result)
    assert second.skipped == 4  # the bucket carried on, empty: both of the second run's are skipped
    said = [r.getMessage() for r in caplog.records if "skipped over the results rate limit" in r.getMessage()]
    # the first run: its first skip, then the rest at its close; the second run: nothing within the minute
    assert [m.split(": ", 1)[1].split(" result")[0] for m in said] == ["1", "1"]
    second.close()
    outbox.close()
