"""``set-ab`` with fraction 0: it ends a split, and says which; with no split running it says there was none.

It was reported ``active`` with the reason ``A/B: 0.00 of requests to 1.0.0`` either way (a walkthrough
read it as a split of nothing), and loaded the version named only to drop it. A real agent, a real
Mosquitto and signed commands, as in test_ota_fixes_18.
"""

from __future__ import annotations

from typing import Any

import pytest

from edgerun.ota.envelope import seal
from edgerun.ota.operator import build_command
from tests.conftest import Broker
from tests.ota_helpers import publish
from tests.test_ota_fixes_18 import ENDED, keys, push_update, rig, unique_model

__all__ = ["keys", "rig"]  # fixtures

pytestmark = pytest.mark.slow


def _set_ab(broker: Broker, key: Any, watcher: Any, device: str, version: str, fraction: float) -> dict[str, Any]:
    doc = build_command("set-ab", model="digits", devices=[device], groups=[], version=version, fraction=fraction)
    publish(broker.port, f"edgerun/{device}/cmd", seal(doc, key))
    return watcher.wait_state(device, doc["command_id"], ENDED)  # type: ignore[no-any-return]


def test_set_ab_zero_says_whether_a_split_ended(broker: Broker, keys: dict[str, Any], rig: Any) -> None:
    agent, watcher = rig()
    device = agent.device
    update = push_update(broker.port, keys["key"], unique_model(agent.state.parent / "v11", "digits_int8.onnx"),
                         "1.1.0", device, probation_s=0)  # fmt: skip
    assert watcher.wait_state(device, update["update_id"], ENDED)["state"] == "active"

    none = _set_ab(broker, keys["key"], watcher, device, "1.0.0", 0.0)
    assert none["state"] == "active" and none["reason"] == "A/B: no split to end; every request to 1.1.0", none

    split = _set_ab(broker, keys["key"], watcher, device, "1.0.0", 0.25)
    assert split["reason"] == "A/B: 0.25 of requests to 1.0.0", split
    assert agent.slot.candidate is not None

    ended = _set_ab(broker, keys["key"], watcher, device, "1.0.0", 0.0)
    assert ended["reason"] == "A/B: the split to 1.0.0 ended; every request to 1.1.0", ended
    assert agent.slot.candidate is None
    after = agent.store.active("digits")
    assert after is not None and (after.version, after.ab) == ("1.1.0", None)
