"""A daemon file pipeline whose sink fails after other sinks took the result: its retry gives no sink any twice.

The pipeline's sinks stop at the result the failed sink refused (``others_go_on=False``), which the sinks
listed before it wrote already. Before, the retry wrote it to them a second time. A failed first sink (nothing
before it) is ``test_a_file_pipeline_retried_after_its_disk_filled_writes_every_input_once``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgerun.sources import open_source
from tests.test_daemon import _in_process_daemon
from tests.test_daemon_retry_and_api_wait import _fill, _images, _sensor, _video
from tests.test_sync import wait_until

pytestmark = pytest.mark.slow


def _inputs(sink: Path) -> list[str]:
    """The inputs of a JSON Lines or CSV sink's records, in the order written."""
    if sink.suffix == ".csv":
        with open(sink, newline="") as fh:
            return [row["input"] for row in csv.DictReader(fh)]
    return [json.loads(line)["input"] for line in sink.read_text().splitlines()]


@pytest.mark.parametrize(
    ("inputs", "failing"),
    [(_images, 1), (_images, 2), (_video, 1), (_sensor, 1)],
    ids=["images-middle", "images-last", "video-middle", "sensor-middle"],
)
def test_a_retried_file_pipeline_leaves_every_sink_each_input_once_in_order_whichever_sink_failed(
    tmp_path: Path,
    small_disk: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
    inputs: Callable[[Path], tuple[Path, str, dict[str, Any]]],
    failing: int,
) -> None:
    model, source, options = inputs(tmp_path)
    expected = [f.source_id for f in open_source(source, window=256, hop=options.get("hop")).frames()]
    disk = small_disk(1 << 20)
    filler = _fill(disk, 2 * 4096)  # some 25 records fit, then the card is full
    out = disk / "out.jsonl"
    sinks = [tmp_path / "before.jsonl", tmp_path / "healthy.csv"]  # on a disk with room
    sinks.insert(failing, out)  # a healthy sink before it (and one after it, in the middle)
    daemon = _in_process_daemon(
        tmp_path / "state",
        {"m": str(model)},
        {"files": {"source": source, "model": "m", "sinks": [str(s) for s in sinks], "restart_s": 0.2, **options}},
    )
    daemon.start()
    try:
        wait_until(
            lambda: any("No space left on device; retrying in 0.2 s" in r.getMessage() for r in caplog.records),
            60,
            "the sink to fail on the full disk",
        )
        # it failed part way, after the sinks before it took that one (whole records only: a retry on the
        # full disk may be cutting a part-written record back right now)
        assert 0 < out.read_bytes().count(b"\n") < len(expected)
        filler.unlink()  # space freed: the next retry goes on
        wait_until(lambda: daemon.runners["files"].state == "finished", 60, "the pipeline to finish")
    finally:
        daemon.stop()
    for sink in sinks:
        assert _inputs(sink) == expected, sink  # each input once, in the source's order: none written twice
