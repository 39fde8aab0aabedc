"""A minimal device process for the sync fault tests: queues numbered records and delivers them.

Run as ``python -m tests.device_proc STATE_DIR PORT DEVICE COUNT [RATE]``; prints
``seq N`` after each record is in the outbox (durable from then on), ``done``
when all were queued and delivered, and exits.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edgerun.sync.link import MqttLink
from edgerun.sync.outbox import Outbox
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics


def main() -> int:
    state, port, device, count = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    topics = Topics("edgerun", device)
    outbox = Outbox(state / "outbox.sqlite")
    settings = MqttSettings(host="127.0.0.1", port=port, keepalive_s=2, reconnect_min_s=0.1, reconnect_max_s=0.5)
    link = MqttLink(settings, topics, outbox)
    link.start()
    for _ in range(count):
        seq = outbox.put("metrics", topics.metrics, {"schema": 1, "device": device, "ts": time.time()})
        link.notify()
        print(f"seq {seq}", flush=True)
        if rate:
            time.sleep(1.0 / rate)
    delivered = link.wait_drained(60)
    link.stop(2)
    print("done" if delivered else "undelivered", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
