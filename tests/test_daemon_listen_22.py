"""A daemon whose HTTP API cannot listen says why, in the system's words: the port in use, an address
not on this machine, a name that does not resolve. It said "(in use, or not allowed)" for all three."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import DIGITS, run_cli

TOKEN = "abcdefghijklmnopqrstuvwxyz012345"


def _daemon_error(tmp_path: Path, bind: str, port: int) -> str:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models:\n  m:\n    path: {DIGITS / 'digits_int8.onnx'}\n"
        f"api:\n  bind: {bind}\n  port: {port}\n  token: {TOKEN}\n"
        f"state_dir: {tmp_path / 'state'}\nlogging:\n  format: text\n"
    )
    done = run_cli("daemon", "--config", str(config))
    assert done.returncode == 1, done.stderr
    return done.stderr.splitlines()[-1]


def test_a_port_in_use_is_named_as_such(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _daemon_error(tmp_path, "127.0.0.1", port)
    assert line == f"edgerun: error: the HTTP API could not listen on 127.0.0.1:{port} (Address already in use)"


@pytest.mark.parametrize(
    ("bind", "why"),
    [
        ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: on no machine
        ("nohost.invalid", "nohost.invalid does not resolve to an address: "),  # .invalid never resolves
    ],
)
def test_an_address_not_here_or_a_name_that_does_not_resolve_is_named_as_such(
    tmp_path: Path, bind: str, why: str
) -> None:
    line = _daemon_error(tmp_path, bind, 18999)
    assert line.startswith(f"edgerun: error: the HTTP API could not listen on {bind}:18999 ({why}"), line
