"""``edgerun config check``: the machine's default device id worked out once, and every shared sink named.

- A config with an MQTT source and no ``device.id`` needs the machine's default id to check that the source
  does not hear the device's own records. Each validation worked it out again, so its warnings (a machine
  id that is not one, an id from the host name) came again at every load: the daemon's start and each
  SIGHUP reload. Now it is worked out once per process. The machine id files are faked the only way the
  command sees them: bind-mounted over /etc/machine-id in a mount namespace of the test's own.
- A file or ``DIR/`` one pipeline writes is no other's. A missing folder hid a clash: a glob source whose
  fixed folder is not there yet, a folder source not there yet with another pipeline's ``DIR/`` inside it
  (the daemon makes a ``DIR/`` with its folders, and waits for a source). Now names are compared as
  written, normalised, where the files are not there. And only the first clash was named: now every one
  is, in the one error line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from edgerun.config import load_config
from edgerun.errors import ConfigError
from tests.conftest import ROOT, run_cli
from tests.test_config_fixes_20 import MODEL, _folders, _one_error
from tests.test_config_shared_sinks_23 import REASON, _config, _read

# -- the default device id, once --------------------------------------------------------------------------

#: bind-mounts $1 (a file that holds no machine id) over each machine id file there is, then runs the rest
_FAKE_MACHINE_ID = (
    'bad=$1; shift; for f in /etc/machine-id /var/lib/dbus/machine-id; do [ -e "$f" ] || continue; '
    'mount --bind "$bad" "$f" || exit 97; done; exec "$@"'
)


def _without_machine_id(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` run from the repository root where the machine id files hold ``uninitialized`` (as an
    image built for first boot leaves them), seen by it alone (a mount namespace of its own); skips the test
    where this machine allows no such namespace."""
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare(1) and mount(8)")
    bad = tmp_path / "machine-id"
    bad.write_text("uninitialized\n")
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.insert(1, "--map-root-user")  # an unprivileged user namespace, where the kernel allows one
    wrapped = [*unshare, "sh", "-c", _FAKE_MACHINE_ID, "sh", str(bad)]
    probe = subprocess.run([*wrapped, "true"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    return subprocess.run([*wrapped, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _mqtt_source_config(conf: Path) -> Path:
    """A config with an MQTT source on the device's own broker and no ``device.id``."""
    path = conf / "c.yaml"
    pipeline = {"source": "mqtt://127.0.0.1:1883/cams/+/frames", "model": "m", "sinks": ["stdout"]}
    data = {
        "models": {"m": {"path": str(MODEL)}},
        "pipelines": {"inbox": pipeline},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
        "api": {"enabled": False},
        "state_dir": str(conf / "state"),
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _device_warnings(stderr: str) -> Counter[str]:
    """The warnings ``edgerun.device`` logged, each with how many times."""
    lines = Counter(line for line in stderr.splitlines() if "edgerun.device" in line)
    assert lines, stderr  # the fake machine id was seen: at least "... is not a machine id"
    return lines


def test_config_check_warns_of_a_machine_id_that_is_not_one_once(tmp_path: Path) -> None:
    conf, _, _ = _folders(tmp_path)
    config = _mqtt_source_config(conf)
    result = _without_machine_id(tmp_path, sys.executable, "-m", "edgerun", "config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert all(count == 1 for count in _device_warnings(result.stderr).values()), result.stderr


def test_loading_the_config_again_as_a_sighup_does_repeats_no_machine_id_warning(tmp_path: Path) -> None:
    """The daemon loads its config at start and again at each SIGHUP (``Daemon.reload``), and names its
    device by the same default id (``Daemon.device_id``: it worked the id out again, a second warning)."""
    conf, _, _ = _folders(tmp_path)
    config = _mqtt_source_config(conf)
    code = (
        "import logging, sys\n"
        "logging.basicConfig(format='%(levelname)s %(name)s: %(message)s')\n"
        "from edgerun.config import load_config\n"
        "from edgerun.daemon import Daemon\n"
        "for _ in range(3):\n"
        "    config = load_config(sys.argv[1])\n"
        "assert Daemon(config).device_id.startswith('edge-')\n"
    )
    result = _without_machine_id(tmp_path, sys.executable, "-c", code, str(config))
    assert result.returncode == 0, result.stderr
    assert all(count == 1 for count in _device_warnings(result.stderr).values()), result.stderr


# -- a missing folder hides no shared sink ------------------------------------------------------------------

NOT_THERE_YET = [
    pytest.param(
        {"cam": ("x.png", ["out/drawn/"]), "g": ("out/drawn/*.jpg", ["stdout"])},
        "cam writes out/drawn/, which the source of g, out/drawn/*.jpg, lists " + _read("g", "cam"),
        id="a-glob-in-the-dir-sink-not-made-yet",
    ),
    pytest.param(
        {"cam": ("x.png", ["out/drawn/"]), "g": ("out/**/*.jpg", ["stdout"])},
        "cam writes out/drawn/, which the source of g, out/**/*.jpg, lists " + _read("g", "cam"),
        id="a-recursive-glob-over-a-folder-not-made-yet",
    ),
    pytest.param(
        {"cam": ("inbox/", ["logs/a.jsonl"]), "g": ("logs/../logs/*.jsonl", ["jsonl"])},
        "cam writes logs/a.jsonl, which the source of g, logs/../logs/*.jsonl, lists " + _read("g", "cam"),
        id="a-glob-through-dot-dot-in-a-folder-not-made-yet",
    ),
    pytest.param(
        {"cam": ("x.png", ["spool/drawn/"]), "door": ("spool", ["stdout"])},
        "cam writes spool/drawn/, inside the source folder of door, spool " + _read("door", "cam"),
        id="a-dir-sink-in-a-source-not-there-yet",
    ),
    pytest.param(
        {"cam": ("x.png", ["new/a.jsonl"]), "door": ("inbox/", ["new/x/../a.jsonl"])},
        f"cam and door both write new/a.jsonl (door as new/x/../a.jsonl; {REASON})",
        id="one-file-in-a-folder-not-made-yet",
    ),
]


@pytest.mark.parametrize(("pipelines", "message"), NOT_THERE_YET)
def test_a_file_two_pipelines_will_share_is_refused_before_its_folder_is_made(
    tmp_path: Path, pipelines: dict[str, tuple[str, list[str]]], message: str
) -> None:
    conf, work, _ = _folders(tmp_path)
    (conf / "inbox").mkdir()
    config = _config(conf, pipelines)
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line == f"edgerun: error: {config}: pipelines: {message}"
    with pytest.raises(ConfigError) as refused:
        load_config(config)
    assert str(refused.value) == f"{config}: pipelines: {message}"
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml", "inbox"]  # nothing made


def test_a_dir_sink_in_its_own_source_folder_not_there_yet_is_refused(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    config = _config(conf, {"cam": ("spool/", ["spool/drawn/"])})
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line == (
        f"edgerun: error: {config}: pipelines.cam: sink 'spool/drawn/' is inside the source folder {conf}/spool/: "
        "the next run over it would take its annotated images for inputs (write them outside the folder)"
    )
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml"]


TAKEN = [
    pytest.param(
        {"cam": ("inbox/", ["out/a.jsonl"]), "g": ("out/*.csv", ["jsonl"])}, id="a-glob-of-another-kind-of-file"
    ),
    pytest.param({"cam": ("x.png", ["out/.drawn/"]), "g": ("out/**/*.jpg", ["stdout"])}, id="a-hidden-folder"),
    pytest.param({"cam": ("x.png", ["out/drawn/"]), "g": ("elsewhere/*.jpg", ["stdout"])}, id="another-folder"),
    pytest.param(
        {"cam": ("inbox/", ["new/a.jsonl", "new/b/"]), "door": ("x.png", ["new/b.jsonl", "new/a/"])},
        id="files-of-their-own-in-a-folder-not-made-yet",
    ),
    pytest.param({"cam": ("x.png", ["spool/drawn/"]), "door": ("spooled", ["stdout"])}, id="a-source-beside-it"),
]


@pytest.mark.parametrize("pipelines", TAKEN)
def test_pipelines_on_files_of_their_own_in_folders_not_made_yet_are_taken(
    tmp_path: Path, pipelines: dict[str, tuple[str, list[str]]]
) -> None:
    conf, work, _ = _folders(tmp_path)
    (conf / "inbox").mkdir()
    config = _config(conf, pipelines)
    result = run_cli("config", "check", str(config), cwd=work)
    assert result.returncode == 0, result.stderr
    assert sorted(yaml.safe_load(result.stdout)["pipelines"]) == sorted(pipelines)


def test_a_dir_sink_where_the_glob_lists_its_images_is_refused_however_deep(tmp_path: Path) -> None:
    """``out/drawn/**`` lists the images in ``out/drawn/`` (each ``NNNNNN.jpg``), not only the folder."""
    conf, work, _ = _folders(tmp_path)
    config = _config(conf, {"cam": ("x.png", ["out/drawn/sub/"]), "g": ("out/drawn/**", ["stdout"])})
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line.endswith("cam writes out/drawn/sub/, which the source of g, out/drawn/**, lists " + _read("g", "cam"))


# -- every clash named --------------------------------------------------------------------------------------


def test_every_file_pipelines_share_is_named_in_the_one_error_line(tmp_path: Path) -> None:
    conf, work, _ = _folders(tmp_path)
    config = _config(
        conf,
        {
            "cam": ("inbox/", ["r.jsonl", "r.csv"]),
            "door": ("inbox/", ["./r.jsonl", "r.csv"]),
            "gate": ("inbox/", ["r.jsonl", "drawn/"]),
            "glob": ("drawn/*.jpg", ["stdout"]),
        },
    )
    line = _one_error(run_cli("config", "check", str(config), cwd=work))
    assert line == (
        f"edgerun: error: {config}: pipelines: cam, door and gate all write r.jsonl (door as ./r.jsonl; {REASON}); "
        f"cam and door both write r.csv ({REASON}); "
        "gate writes drawn/, which the source of glob, drawn/*.jpg, lists " + _read("glob", "gate")
    )
    assert sorted(p.name for p in conf.iterdir()) == ["c.yaml"]
