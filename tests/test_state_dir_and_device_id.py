"""The state directory, the device id and ``config check``, each as a user meets it.

- A user with no home directory (``$HOME`` unset, no password database entry: a systemd unit
  with ``DynamicUser=``, a container run as an arbitrary uid) gets one line saying how to name
  the state directory, not a traceback.
- A transient machine id (systemd's tmpfs mount over /etc/machine-id, new at every boot) does
  not make a new device at every boot: the board serial, else the host name, is used instead.
- ``config check`` refuses an API token file the daemon would stop on, with the daemon's line.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.device import default_device_id
from tests.conftest import ROOT, FakeTree, run_cli

DIGITS = ROOT / "models" / "digits"
MODEL = f"models:\n  digits:\n    path: {DIGITS}/digits_int8.tflite\n"

# -- a user with no home directory ---------------------------------------------------------

NO_PASSWD_UID = 54321  # checked below to have no entry in this machine's password database

# ``python -m edgerun`` with the password database out of reach, as for a uid it has no entry for:
# Python's home lookup (os.path.expanduser) finds no ``pwd`` and gives up as it does on a KeyError.
_WITHOUT_PWD = (
    "import runpy, sys; sys.modules['pwd'] = None; sys.argv[0] = 'edgerun'; "
    "runpy.run_module('edgerun', run_name='__main__', alter_sys=True)"
)


def _no_passwd_entry_for(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def _user_namespaces_work() -> bool:
    """Whether ``unshare`` can run a command as NO_PASSWD_UID (a user namespace mapped onto this user)."""
    if shutil.which("unshare") is None or not _no_passwd_entry_for(NO_PASSWD_UID):
        return False
    probe = subprocess.run(
        ["unshare", "--user", f"--map-user={NO_PASSWD_UID}", f"--map-group={NO_PASSWD_UID}", "--", "true"],
        capture_output=True,
    )
    return probe.returncode == 0


def _homeless_cli(way: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``edgerun ARGS`` as a real process without ``$HOME``, its uid having no home directory.

    ``uid``: really run as a uid with no password database entry, in a user namespace mapped
    onto this user (so every file this user reads stays readable). ``no-pwd``: as this user,
    with the password database out of Python's reach, for machines refusing user namespaces.
    """
    if env is None:
        env = {k: v for k, v in os.environ.items() if k not in ("HOME", "EDGERUN_STATE_DIR", "XDG_STATE_HOME")}
    if way == "uid":
        if not _user_namespaces_work():
            pytest.skip(f"no user namespaces here to run as uid {NO_PASSWD_UID}")
        argv = ["unshare", "--user", f"--map-user={NO_PASSWD_UID}", f"--map-group={NO_PASSWD_UID}", "--"]
        argv += [sys.executable, "-m", "edgerun", *args]
    else:
        argv = [sys.executable, "-c", _WITHOUT_PWD, *args]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _config_file(tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(MODEL)
    return str(path)


COMMANDS = {
    "predict": lambda tmp_path: ["predict", str(DIGITS / "digits_int8.tflite"), str(DIGITS / "samples/digit_3.png")],
    "daemon": lambda tmp_path: ["daemon"],  # the built-in config: the sample model, the API on loopback
    "config-check": lambda tmp_path: ["config", "check", _config_file(tmp_path)],
}


@pytest.mark.parametrize("way", ["uid", "no-pwd"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_user_with_no_home_directory_is_told_in_one_line_how_to_name_the_state_dir(
    tmp_path: Path, command: str, way: str
) -> None:
    result = _homeless_cli(way, *COMMANDS[command](tmp_path))
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("edgerun: error: ") and "no state directory" in lines[0], lines[0]
    for remedy in ("EDGERUN_STATE_DIR", "XDG_STATE_HOME", "state_dir"):
        assert remedy in lines[0], lines[0]


@pytest.mark.parametrize("way", ["uid", "no-pwd"])
def test_a_user_with_no_home_directory_runs_once_edgerun_state_dir_names_one(tmp_path: Path, way: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_STATE_HOME")}
    env["EDGERUN_STATE_DIR"] = str(tmp_path / "state")
    result = _homeless_cli(way, *COMMANDS["predict"](tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    assert "3" in result.stdout


@pytest.mark.parametrize("way", ["uid", "no-pwd"])
def test_a_user_with_no_home_directory_runs_with_a_state_dir_given_and_the_card_cache_goes_there(
    tmp_path: Path, way: str
) -> None:
    """Once the model card's cache looked for ~/.local/state itself: with no home directory the run
    stopped with 'no state directory' though --state-dir (a daemon's state_dir) named one."""
    model = tmp_path / "digits_int8.tflite"
    shutil.copy(DIGITS / "digits_int8.tflite", model)
    shutil.copy(DIGITS / "digits_int8.tflite.card.yaml", tmp_path / "digits_int8.tflite.card.yaml")
    (tmp_path / "state").mkdir(mode=0o777)
    tmp_path.chmod(0o755)
    args = ["predict", str(model), str(DIGITS / "samples/digit_3.png"), "--state-dir", str(tmp_path / "state")]
    result = _homeless_cli(way, *args)
    assert result.returncode == 0, result.stderr
    assert "3" in result.stdout
    assert len(list((tmp_path / "state" / "cards").glob("*.json"))) == 1


# -- a transient machine id ------------------------------------------------------------------

SERIAL = "10000000a1b2c3d4"
# /proc/self/mountinfo on a Raspberry Pi OS overlay-root boot: systemd wrote the random id to
# /run/machine-id (tmpfs) and bind-mounted it over the read-only /etc/machine-id.
MOUNTINFO = (
    "22 1 179:2 / / ro,noatime shared:1 - ext4 /dev/mmcblk0p2 ro\n"
    "25 22 0:23 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=388296k,mode=755\n"
    "26 22 0:23 /machine-id /etc/machine-id ro shared:5 - tmpfs tmpfs rw,size=388296k,mode=755\n"
)


def _booted(tmp_path: Path, name: str, machine_id: str, *, serial: str | None = SERIAL) -> FakeTree:
    """A fake root as one boot leaves it: a transient ``machine_id`` mounted over /etc/machine-id,
    /var/lib/dbus/machine-id a link to it (Debian, Raspberry Pi OS), and the board serial."""
    tree = FakeTree(tmp_path / name).file("etc/machine-id", machine_id + "\n").file("run/machine-id", machine_id)
    tree.file("proc/self/mountinfo", MOUNTINFO)
    (tree.root / "var/lib/dbus").mkdir(parents=True)
    (tree.root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    if serial is not None:
        tree.file("sys/firmware/devicetree/base/serial-number", serial + "\x00")
    return tree


def _sha(prefix: bytes, text: str) -> str:
    return "edge-" + hashlib.sha256(prefix + text.encode()).hexdigest()[:12]


def test_a_transient_machine_id_gives_the_same_device_id_at_every_boot_from_the_board_serial(
    tmp_path: Path,
) -> None:
    first = _booted(tmp_path, "boot1", "3d1219c7c4c5404aaa1f6d2a48adfda4")
    second = _booted(tmp_path, "boot2", "8e5f0a7b2c9d4e1f8a3b6c0d9e2f1a4b")
    ids = [default_device_id(str(first.root)), default_device_id(str(second.root))]
    assert ids == [_sha(b"serial:", SERIAL)] * 2


def test_a_transient_machine_id_without_a_board_serial_falls_back_to_the_host_name(tmp_path: Path) -> None:
    tree = _booted(tmp_path, "vm", "3d1219c7c4c5404aaa1f6d2a48adfda4", serial=None)
    assert default_device_id(str(tree.root)) == _sha(b"", socket.gethostname())


def test_a_transient_machine_id_is_warned_about_once_naming_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = _booted(tmp_path, "pi", "3d1219c7c4c5404aaa1f6d2a48adfda4")
    with caplog.at_level(logging.WARNING, logger="edgerun.device"):
        default_device_id(str(tree.root))
        default_device_id(str(tree.root))
    warnings = [r.getMessage() for r in caplog.records if "transient" in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert str(tree.root / "etc/machine-id") in warnings[0] and "changes at every boot" in warnings[0]


def test_a_dbus_machine_id_of_its_own_on_disk_is_used_when_etc_machine_id_is_transient(tmp_path: Path) -> None:
    """systemd copies /var/lib/dbus/machine-id into a transient /etc/machine-id where one is on disk."""
    dbus_id = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    ids = set()
    for boot, transient_id in (("boot1", "3d1219c7c4c5404aaa1f6d2a48adfda4"), ("boot2", dbus_id)):
        tree = _booted(tmp_path, boot, transient_id)
        (tree.root / "var/lib/dbus/machine-id").unlink()
        tree.file("var/lib/dbus/machine-id", dbus_id + "\n")
        ids.add(default_device_id(str(tree.root)))
    assert ids == {_sha(b"", dbus_id)}


def test_a_machine_id_bind_mounted_from_a_disk_is_kept(tmp_path: Path) -> None:
    """A container given the host's id, or an image keeping it on a data partition: persistent."""
    machine_id = "3d1219c7c4c5404aaa1f6d2a48adfda4"
    tree = _booted(tmp_path, "ct", machine_id)
    tree.file(
        "proc/self/mountinfo",
        MOUNTINFO.replace(
            "26 22 0:23 /machine-id /etc/machine-id ro shared:5 - tmpfs tmpfs rw,size=388296k,mode=755",
            "26 22 179:3 /data/machine-id /etc/machine-id ro shared:7 - ext4 /dev/mmcblk0p3 rw",
        ),
    )
    assert default_device_id(str(tree.root)) == _sha(b"", machine_id)


# -- config check and the API token file -----------------------------------------------------


def _daemon(config: Path) -> subprocess.CompletedProcess[str]:
    """``edgerun daemon --config CONFIG``, expected to stop at start by itself."""
    return subprocess.run(
        [sys.executable, "-m", "edgerun", "daemon", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


SECRETS = pytest.mark.parametrize(
    ("section", "key", "secret"),
    [
        ("api:\n  port: 0\n  token_file: {}\n", "api.token_file", "api-token"),
        ("api:\n  port: 0\n  token_file: {}\n", "api.token_file", "secrets/api-token"),
        (
            "api:\n  enabled: false\nmqtt:\n  url: mqtt://dev1@127.0.0.1:1\n  password_file: {}\n",
            "mqtt.password_file",
            "mqtt-password",
        ),
    ],
    ids=["token", "token-in-a-folder", "mqtt-password"],
)


@SECRETS
def test_config_check_names_a_secret_file_not_there_yet_which_the_daemon_stops_on(
    tmp_path: Path, section: str, key: str, secret: str
) -> None:
    """Once passed without a word. A config is often checked away from the device its secrets are
    installed on: a warning, not an error (the shipped configs name files under /etc/edgerun)."""
    config = tmp_path / "c.yaml"
    config.write_text(MODEL + section.format(secret) + f"state_dir: {tmp_path / 'state'}\n")
    daemon = _daemon(config)
    assert daemon.returncode == 2 and "Traceback" not in daemon.stderr, daemon.stderr
    assert daemon.stderr.splitlines()[-1] == (
        f"edgerun: error: {config}: cannot read {key} {tmp_path / secret}: No such file or directory"
    )

    check = run_cli("config", "check", str(config))
    assert check.returncode == 0, check.stderr
    assert check.stderr.splitlines() == [
        f"edgerun: warning: {config}: {key} {tmp_path / secret} is not there: the daemon stops at start until it is"
    ]


@SECRETS
def test_config_check_refuses_a_secret_file_the_daemon_cannot_read_with_the_daemons_line(
    tmp_path: Path, section: str, key: str, secret: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(MODEL + section.format(secret) + f"state_dir: {tmp_path / 'state'}\n")
    (tmp_path / secret).mkdir(parents=True)  # there, and not a file
    daemon = _daemon(config)
    assert daemon.returncode == 2 and "Traceback" not in daemon.stderr, daemon.stderr
    stopped_on = daemon.stderr.strip().splitlines()[-1]
    # once without the config file's name; the token file was read after models and pipelines started
    assert stopped_on == f"edgerun: error: {config}: cannot read {key} {tmp_path / secret}: Is a directory"
    assert "loaded digits" not in daemon.stderr  # before anything was loaded

    check = run_cli("config", "check", str(config))
    assert check.returncode == 2, (check.stdout, check.stderr)
    assert check.stderr.splitlines() == [stopped_on]
    assert "valid" not in check.stdout


def test_config_check_passes_a_missing_token_file_when_the_api_is_off(tmp_path: Path) -> None:
    """The daemon reads the token file only to start the API."""
    config = tmp_path / "c.yaml"
    config.write_text(MODEL + f"api:\n  enabled: false\n  token_file: api-token\nstate_dir: {tmp_path / 'state'}\n")
    check = run_cli("config", "check", str(config))
    assert check.returncode == 0, check.stderr


def test_a_tls_file_that_cannot_work_is_one_line_from_config_check_and_the_daemon(tmp_path: Path) -> None:
    """Once the daemon died of paho's ssl.SSLError ("PEM lib") with a traceback, after loading its models."""
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        MODEL + f"api:\n  enabled: false\nmqtt:\n  url: mqtts://127.0.0.1:1\n  ca_file: {not_pem}\n"
        f"state_dir: {tmp_path / 'state'}\n"
    )
    daemon = _daemon(config)
    assert daemon.returncode == 2 and "Traceback" not in daemon.stderr, daemon.stderr
    line = daemon.stderr.splitlines()[-1]
    assert line.startswith(f"edgerun: error: {config}: mqtt.ca_file {not_pem} holds no PEM certificate"), line
    check = run_cli("config", "check", str(config))
    assert check.returncode == 2 and check.stderr.splitlines() == [line]
