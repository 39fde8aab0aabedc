"""ONNX Runtime's own telemetry (1.29 and later on Linux) is off wherever edgerun imports it: no device id or
event cache written under the home folder, no uploader, unless the user sets ``ORT_DISABLE_TELEMETRY=0``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

MODEL = ROOT / "models" / "digits" / "digits_int8.onnx"
IMAGE = ROOT / "models" / "digits" / "samples" / "digit_3.png"


#: Variables by which ONNX Runtime tells a CI machine, where it collects nothing whatever the switch says
#: (as found in its library): left out, so that the test sees what a device would.
_CI_VARIABLES = {
    "CI", "BUILDKITE", "CIRCLECI", "CODEBUILD_BUILD_ID", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL",
    "SYSTEM_TEAMFOUNDATIONCOLLECTIONURI", "TEAMCITY_VERSION", "TF_BUILD", "TRAVIS",
}  # fmt: skip


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY" and k not in _CI_VARIABLES}
    return {**env, "HOME": str(home), **extra}


def _written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


@pytest.mark.parametrize("extra", [{}, {"ORT_DISABLE_TELEMETRY": ""}], ids=["unset", "empty"])
def test_predict_writes_nothing_under_home_for_onnx_runtime(tmp_path: Path, extra: dict[str, str]) -> None:
    done = run_cli("predict", str(MODEL), str(IMAGE), "--json", env=_env(tmp_path, **extra))
    assert done.returncode == 0, done.stderr
    assert '"label": "3"' in done.stdout
    assert _written(tmp_path) == []
    assert "telemetry" not in done.stderr


def test_the_library_turns_it_off_too_and_the_user_can_turn_it_back_on(tmp_path: Path) -> None:
    script = "import sys, edgerun; print(edgerun.load(sys.argv[1]).predict(sys.argv[2]).output[0]['label'])"
    off, on = tmp_path / "off", tmp_path / "on"
    off.mkdir(), on.mkdir()
    for home, extra in ((off, {}), (on, {"ORT_DISABLE_TELEMETRY": "0"})):
        done = subprocess.run(
            [sys.executable, "-c", script, str(MODEL), str(IMAGE)],
            cwd=ROOT,
            env=_env(home, **extra),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "3\n"
    assert _written(off) == []
    import onnxruntime

    if tuple(int(p) for p in onnxruntime.__version__.split(".")[:2]) < (1, 29):
        pytest.skip(f"onnxruntime {onnxruntime.__version__} has no telemetry on Linux: nothing to turn back on")
    assert any("onnxruntime" in path for path in _written(on)), _written(on)  # the user's choice holds
