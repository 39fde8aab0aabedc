"""``devices --model --delegate fastest`` from the cache names why its choice was made and still lists the
candidates the timing ranked lower (it said "first usable in rank order" and left them out)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import DIGITS, run_cli


def _attempts(state: Path) -> tuple[bool, dict[str, dict[str, object]]]:
    done = run_cli("devices", "--model", str(DIGITS / "digits_int8.tflite"), "--delegate", "fastest",
                   "--state-dir", str(state), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    selection = json.loads(done.stdout)["model"]["selection"]
    return selection["cached"], {a["delegate"]: a for a in selection["attempts"]}


def test_a_cached_fastest_choice_lists_every_timed_candidate_with_its_cached_time(tmp_path: Path) -> None:
    cached, timed = _attempts(tmp_path)
    assert not cached
    usable = {name for name, a in timed.items() if a["status"] in ("chosen", "usable")}
    assert len(usable) >= 2  # xnnpack and the reference kernels, here
    cached, again = _attempts(tmp_path)
    assert cached
    chosen = [a for a in again.values() if a["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["reason"] == "fastest (cached)"
    assert chosen[0]["latency_ms"] == timed[chosen[0]["delegate"]]["latency_ms"]  # the timing the cache holds
    for name in usable - {chosen[0]["delegate"]}:
        assert again[name]["status"] == "not-tried" and again[name]["reason"] == "slower when timed (cached)"
        assert again[name]["latency_ms"] == timed[name]["latency_ms"]
