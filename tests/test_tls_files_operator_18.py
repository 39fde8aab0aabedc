"""The operator's commands and ``mqtt check`` check the TLS files as ``run`` does: one line naming the option,
exit 2, before anything is dialled. ``ota status``, ``clear`` and ``rollback`` gave ssl's traceback, and
``mqtt check`` prompted for a key's passphrase on the terminal, or blamed the network."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.certs import make_pki
from tests.conftest import free_port, run_cli
from tests.test_run_device_audit import _encrypted_key


@pytest.fixture(scope="module")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("keys") / "op"
    done = run_cli("keys", "generate", str(base))
    assert done.returncode == 0, done.stderr
    return base.with_name("op.pem")


@pytest.mark.parametrize("command", ["ota-status", "ota-clear", "ota-rollback", "mqtt-check"])
@pytest.mark.parametrize("case", ["ca-not-a-certificate", "key-of-another-cert", "key-encrypted"])
def test_a_tls_file_that_cannot_work_is_one_line_naming_the_option(
    tmp_path: Path, operator_key: Path, command: str, case: str
) -> None:
    pki = make_pki(tmp_path / "pki")
    encrypted = _encrypted_key(tmp_path / "enc.key")
    options, option, path = {
        "ca-not-a-certificate": (["--mqtt-ca", str(pki.server_key)], "--mqtt-ca", pki.server_key),
        "key-of-another-cert": (
            ["--mqtt-ca", str(pki.ca), "--mqtt-cert", str(pki.client_cert), "--mqtt-key", str(pki.server_key)],
            "--mqtt-key",
            pki.server_key,
        ),
        "key-encrypted": (
            ["--mqtt-ca", str(pki.ca), "--mqtt-cert", str(pki.client_cert), "--mqtt-key", str(encrypted)],
            "--mqtt-key",
            tmp_path / "enc.key",
        ),
    }[case]
    words = {
        "ota-status": ["ota", "status"],
        "ota-clear": ["ota", "clear"],
        "ota-rollback": ["ota", "rollback", "--model", "digits", "--device", "dev1", "--key", str(operator_key)],
        "mqtt-check": ["mqtt", "check", "--device-id", "dev1"],
    }[command]
    done = run_cli(*words, "--mqtt", f"mqtts://127.0.0.1:{free_port()}", *options)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgerun: error: {option} {path} "), lines
    assert "pass phrase" not in done.stdout + done.stderr
