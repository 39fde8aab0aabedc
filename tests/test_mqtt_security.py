"""TLS, authentication and ACL failures, each named in one line, against real Mosquitto brokers.

Every broker here is a private Mosquitto on a free loopback port (never the
machine's own on 1883), with certificates made by ``tests/certs.py``. The
``edgerun mqtt check`` cases run the real command line as a process; the link
cases run ``MqttLink`` in this process and watch its ``state()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerun.sync.link import MqttLink
from edgerun.sync.settings import MqttSettings
from edgerun.sync.topics import Topics
from tests.certs import Pki, make_pki  # needs the cryptography package
from tests.conftest import Broker, free_port, run_cli


def _mosquitto() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
    return binary


def _broker(workdir: Path, conf: str) -> Broker:
    """A started private broker whose whole configuration is ``conf`` (plus listener and user).

    The configuration is written here rather than taken from ``Broker``'s defaults,
    so what each test's broker does (anonymous access, queue limits) is stated in the test.
    """
    _mosquitto()
    b = Broker(workdir)
    assert b.port != 1883
    root = "user root\n" if os.geteuid() == 0 else ""  # as root, mosquitto would drop to a user that cannot read tmp
    b.conf.write_text(f"listener {b.port} 127.0.0.1\n{root}persistence false\n{conf}")
    b.start()
    return b


def _env(password: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGERUN_MQTT_PASSWORD"}
    if password is not None:
        env["EDGERUN_MQTT_PASSWORD"] = password
    return env


def _check(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = run_cli("mqtt", "check", *args, env=_env(password))
    assert time.monotonic() - started < 20, "edgerun mqtt check took too long"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _fails_with(result: subprocess.CompletedProcess[str], line: str) -> None:
    """Exit 1 and exactly one stderr line, ``edgerun: error: LINE``."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [f"edgerun: error: {line}"], result.stderr


def _passed(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The steps printed as passed, in order (every stdout line is ``ok    STEP  detail``)."""
    lines = result.stdout.splitlines()
    assert all(line.startswith("ok ") for line in lines), result.stdout
    return [line.split()[1] for line in lines]


def _passes(result: subprocess.CompletedProcess[str], steps: list[str]) -> None:
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    assert _passed(result) == steps, result.stdout


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# -- TLS ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Broker]:
    """Mutual TLS: the broker's certificate is for ``localhost`` only, and clients must present one."""
    b = _broker(
        tmp_path_factory.mktemp("tls-broker"),
        f"allow_anonymous true\ncafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\n",
    )
    yield b
    b.stop()


def _tls_args(
    b: Broker, ca: Path, cert: Path | None = None, key: Path | None = None, host: str = "localhost"
) -> list[str]:
    args = ["--mqtt", f"mqtts://{host}:{b.port}", "--mqtt-ca", str(ca), "--device-id", "dev1"]
    if cert is not None and key is not None:
        args += ["--mqtt-cert", str(cert), "--mqtt-key", str(key)]
    return args


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_client_certificate_from_the_right_ca_passes_every_step(tls_broker: Broker, pki: Pki, protocol: str) -> None:
    result = _check(*_tls_args(tls_broker, pki.ca, pki.client_cert, pki.client_key), "--mqtt-protocol", protocol)
    _passes(result, ["dns", "tcp", "tls", "connect", "publish"])
    assert "broker certificate verified for localhost" in result.stdout


def test_a_wrong_ca_file_fails_the_tls_step_on_certificate_verification(tls_broker: Broker, pki: Pki) -> None:
    result = _check(*_tls_args(tls_broker, pki.other_ca, pki.client_cert, pki.client_key))
    _fails_with(
        result,
        f"TLS: the broker's certificate at localhost:{tls_broker.port} was rejected: "
        "self-signed certificate in certificate chain (is the CA file right?)",
    )
    assert _passed(result) == ["dns", "tcp"]


def test_connecting_by_ip_to_a_certificate_for_localhost_names_the_ip_mismatch(tls_broker: Broker, pki: Pki) -> None:
    result = _check(*_tls_args(tls_broker, pki.ca, pki.client_cert, pki.client_key, host="127.0.0.1"))
    _fails_with(
        result,
        f"TLS: the broker's certificate at 127.0.0.1:{tls_broker.port} was rejected: "
        "IP address mismatch, certificate is not valid for '127.0.0.1'.",
    )
    assert _passed(result) == ["dns", "tcp"]


def test_an_expired_client_certificate_is_reported_as_expired(tls_broker: Broker, pki: Pki) -> None:
    # TLS 1.3: the broker checks the client certificate after the handshake has finished on our side.
    result = _check(*_tls_args(tls_broker, pki.ca, pki.expired_cert, pki.expired_key))
    _fails_with(
        result,
        f"TLS handshake with localhost:{tls_broker.port} failed: the broker rejected our client certificate: "
        "it has expired (SSLV3_ALERT_CERTIFICATE_EXPIRED)",
    )
    assert _passed(result) == ["dns", "tcp"]


def test_no_client_certificate_says_the_broker_requires_one(tls_broker: Broker, pki: Pki) -> None:
    result = _check(*_tls_args(tls_broker, pki.ca))
    _fails_with(
        result,
        f"TLS handshake with localhost:{tls_broker.port} failed: the broker requires a client certificate "
        "(set the cert and key) (TLSV13_ALERT_CERTIFICATE_REQUIRED)",
    )
    assert _passed(result) == ["dns", "tcp"]


def test_the_link_names_a_wrong_ca_while_it_keeps_retrying(tls_broker: Broker, pki: Pki) -> None:
    settings = MqttSettings.from_url(
        f"mqtts://localhost:{tls_broker.port}",
        ca_file=str(pki.other_ca),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
        reconnect_min_s=0.2,
        reconnect_max_s=0.5,
    )
    link = MqttLink(settings, Topics("edgerun", "dev1"), None)
    started = time.monotonic()
    link.start()
    assert time.monotonic() - started < 3  # a thread started; a wait for the broker would take its 5 s timeout
    try:
        assert _wait_for(lambda: link.state().last_error is not None, 5), "no error reported"
        assert link.state().last_error == (
            f"TLS: the broker's certificate at localhost:{tls_broker.port} was rejected: "
            "self-signed certificate in certificate chain (is the CA file right?)"
        )
        assert not link.connected
    finally:
        started = time.monotonic()
        link.stop()
        assert time.monotonic() - started < 3


def test_the_link_names_an_expired_client_certificate_while_it_keeps_retrying(tls_broker: Broker, pki: Pki) -> None:
    settings = MqttSettings.from_url(
        f"mqtts://localhost:{tls_broker.port}",
        ca_file=str(pki.ca),
        cert_file=str(pki.expired_cert),
        key_file=str(pki.expired_key),
        reconnect_min_s=0.2,
        reconnect_max_s=0.5,
    )
    link = MqttLink(settings, Topics("edgerun", "dev1"), None)
    link.start()
    try:
        _wait_for(lambda: link.state().last_error is not None, 4)
        assert not link.connected
        assert "expired" in (link.state().last_error or "")
    finally:
        link.stop()


# -- user name and password, ACL -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A password file with dev1/secret and an ACL letting dev1 read and write only ``edgerun/dev1/#``."""
    d = tmp_path_factory.mktemp("auth")
    passwd, acl = d / "passwd", d / "acl"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(passwd), "dev1", "secret"], check=True, timeout=10, capture_output=True)
    acl.write_text("user dev1\ntopic readwrite edgerun/dev1/#\n")
    return passwd, acl


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory, auth_files: tuple[Path, Path]) -> Iterator[Broker]:
    """Password auth and the ACL, with Mosquitto's default queue limits."""
    passwd, acl = auth_files
    b = _broker(
        tmp_path_factory.mktemp("auth-broker"),
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\n",
    )
    yield b
    b.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_wrong_password_fails_the_connect_step_on_authentication(auth_broker: Broker, protocol: str) -> None:
    result = _check(
        "--mqtt", f"mqtt://dev1:wrong@127.0.0.1:{auth_broker.port}", "--device-id", "dev1", "--mqtt-protocol", protocol
    )
    # Mosquitto 2 answers a wrong password with "Not authorized", not "Bad user name or password".
    _fails_with(
        result,
        "authentication: the broker says this client is not authorized (Not authorized): "
        "check the user name and password",
    )
    assert _passed(result) == ["dns", "tcp"]


def test_the_right_password_in_the_url_passes_every_step(auth_broker: Broker) -> None:
    result = _check("--mqtt", f"mqtt://dev1:secret@127.0.0.1:{auth_broker.port}", "--device-id", "dev1")
    _passes(result, ["dns", "tcp", "connect", "publish"])
    assert "MQTT 5 session accepted for user dev1" in result.stdout


def test_the_right_password_from_the_environment_passes_every_step(auth_broker: Broker) -> None:
    result = _check("--mqtt", f"mqtt://dev1@127.0.0.1:{auth_broker.port}", "--device-id", "dev1", password="secret")
    _passes(result, ["dns", "tcp", "connect", "publish"])
    assert "MQTT 5 session accepted for user dev1" in result.stdout
    assert "secret" not in result.stdout


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_acl_lets_dev1_publish_under_its_own_topics(auth_broker: Broker, protocol: str) -> None:
    result = _check(
        "--mqtt", f"mqtt://dev1:secret@127.0.0.1:{auth_broker.port}", "--device-id", "dev1", "--mqtt-protocol", protocol
    )
    _passes(result, ["dns", "tcp", "connect", "publish"])
    assert "publish to edgerun/dev1/check" in result.stdout


def test_an_acl_refusal_is_named_from_the_mqtt5_puback(auth_broker: Broker) -> None:
    result = _check("--mqtt", f"mqtt://dev1:secret@127.0.0.1:{auth_broker.port}", "--device-id", "dev2")
    # Mosquitto 2 answers a refused QoS 1 publish from an MQTT 5 client with PUBACK 0x87.
    _fails_with(result, "ACL: the broker refused a publish to edgerun/dev2/check (Not authorized)")
    assert _passed(result) == ["dns", "tcp", "connect"]


def test_an_acl_refusal_is_named_for_mqtt311_when_the_message_never_comes_back(auth_broker: Broker) -> None:
    # MQTT 3.1.1 has no refusal code: Mosquitto acknowledges the publish and drops it.
    result = _check(
        "--mqtt",
        f"mqtt://dev1:secret@127.0.0.1:{auth_broker.port}",
        "--device-id",
        "dev2",
        "--mqtt-protocol",
        "3.1.1",
        "--timeout",
        "1",
    )
    _fails_with(
        result,
        "ACL: a publish to edgerun/dev2/check was acknowledged but never delivered: "
        "the broker's ACL dropped it (MQTT 3.1.1 cannot say so), or the device may not read it",
    )


def test_an_acl_refusal_is_named_for_mqtt311_when_the_broker_hangs_up(
    tmp_path: Path, auth_files: tuple[Path, Path]
) -> None:
    # With max_queued_messages 0 (as tests/conftest.py's brokers have), Mosquitto 2.0
    # acknowledges a refused QoS 1 publish and then closes the connection.
    passwd, acl = auth_files
    b = _broker(
        tmp_path / "broker",
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {acl}\nmax_queued_messages 0\n",
    )
    try:
        started = time.monotonic()
        result = _check(
            "--mqtt", f"mqtt://dev1:secret@127.0.0.1:{b.port}", "--device-id", "dev2", "--mqtt-protocol", "3.1.1"
        )
        _fails_with(
            result,
            "ACL: the broker acknowledged a publish to edgerun/dev2/check, then closed the connection: "
            "its ACL refused the publish (MQTT 3.1.1 cannot say so)",
        )
        assert time.monotonic() - started < 4, "the check waited out its timeout instead of noticing the hang-up"
    finally:
        b.stop()


def test_the_link_reports_a_wrong_password_while_it_keeps_retrying(auth_broker: Broker) -> None:
    settings = MqttSettings.from_url(
        f"mqtt://dev1:wrong@127.0.0.1:{auth_broker.port}", reconnect_min_s=0.2, reconnect_max_s=0.5
    )
    link = MqttLink(settings, Topics("edgerun", "dev1"), None)
    started = time.monotonic()
    link.start()
    assert time.monotonic() - started < 3, "start() must not wait for the broker (inference never blocks)"
    try:
        assert not link.connected
        assert _wait_for(lambda: link.state().last_error is not None, 5), "no error reported"
        assert link.state().last_error == (
            "authentication: the broker says this client is not authorized (Not authorized): "
            "check the user name and password"
        )
        time.sleep(0.6)  # at least one more attempt, still refused and still reported
        state = link.state()
        assert not state.connected and state.connects == 0
        assert (state.last_error or "").startswith("authentication:")
    finally:
        started = time.monotonic()
        link.stop()
        assert time.monotonic() - started < 3, "stop() must return promptly while disconnected"


# -- plain network errors -----------------------------------------------------------------------------------------


def test_nothing_listening_on_the_port_is_a_refused_tcp_connection() -> None:
    port = free_port()
    result = _check("--mqtt", f"mqtt://127.0.0.1:{port}", "--device-id", "dev1")
    _fails_with(result, f"TCP: connection to 127.0.0.1:{port} refused (is the broker running and listening there?)")
    assert _passed(result) == ["dns"]


def test_an_unresolvable_host_fails_the_dns_step() -> None:
    result = _check("--mqtt", f"mqtt://nosuchhost.invalid:{free_port()}", "--device-id", "dev1")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("edgerun: error: DNS: cannot resolve nosuchhost.invalid: "), line
    assert result.stdout == ""
