"""The latency percentiles every summary, metrics record and ``bench`` figure shows are ``np.percentile``'s
(linear) to the bit, without its first call's import of ``numpy.ma`` (11 ms of each ``predict`` or ``run``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgerun.telemetry.metrics import percentiles
from tests.conftest import ROOT

QS = (0, 1, 25, 50, 90, 95, 99, 99.9, 100)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 99, 100, 101, 1000, 4097])
def test_percentiles_are_numpys_to_the_bit(n: int) -> None:
    rng = np.random.default_rng(n)
    for samples in (rng.random(n) * 100, rng.integers(0, 5, n).astype(np.float64), rng.exponential(3, n)):
        assert percentiles(samples, QS) == [float(v) for v in np.percentile(samples, QS)]


def test_a_percentile_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentiles(np.array([]), (50,))


def test_a_pipeline_run_through_the_cli_does_not_import_numpy_ma(tmp_path: object) -> None:
    # five inputs: the pipeline's path, whose summary takes the run's percentiles
    script = (
        "import sys, glob, contextlib, io\n"
        "from edgerun.cli.main import main\n"
        "images = sorted(glob.glob('models/digits/samples/*.png'))[:5]\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(['predict', 'models/digits/digits_int8.onnx', *images])\n"
        "assert code == 0 and '# 5 ok, 0 failed' in out.getvalue(), out.getvalue()\n"
        "print('numpy.ma' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "False\n"
