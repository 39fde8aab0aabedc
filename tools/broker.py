"""A private Mosquitto for the tests and the benchmarks (never the machine's own broker on 1883).

A config file in a temp dir, a free loopback port, persistence on, and the
per-client limits raised, because Mosquitto's default ``max_queued_messages
1000`` silently drops QoS 1 messages for a subscriber that falls behind
(BASELINES.md): broker acknowledgement is not delivery. Tests stop and start it
to make real outages.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["Broker", "free_port", "mosquitto_binary"]


def mosquitto_binary() -> str | None:
    """The mosquitto executable, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A private Mosquitto on a free loopback port, which can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, *, autosave_s: int = 1, extra_conf: str = "") -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise FileNotFoundError("mosquitto is not installed (apt-get install -y mosquitto mosquitto-clients)")
        self.binary = binary
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {workdir}/\nautosave_interval {autosave_s}\n"
            # Never drop: no per-client queue or in-flight limits, no message size limit.
            "max_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 0\n"
            # Started as root, mosquitto drops to its own user, which cannot write our temp dir.
            "message_size_limit 0\n" + ("user root\n" if os.geteuid() == 0 else "") + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it accepts connections (10 s at most)."""
        with open(self.workdir / "log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {(self.workdir / 'log').read_text()}")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 10 s)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://127.0.0.1:{self.port}"

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
