"""``predict --resume`` says how many of *these* inputs were done (it said how many the file names),
and warns when none of the recorded ones is among them (a run resumed from another folder, whose
relative paths name other files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DIGITS
from tests.test_input_edges import _edgerun, _recorded, _samples

MODEL = str(DIGITS / "digits_fp32.onnx")


def test_the_resume_header_counts_the_inputs_left_out_not_the_lines_of_the_file(tmp_path: Path) -> None:
    _samples(tmp_path, range(4))
    first = _edgerun("predict", MODEL, "imgs/digit_0.png", "imgs/digit_1.png", "imgs/digit_2.png",
                     "--output", "out.jsonl", cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    resumed = _edgerun("predict", MODEL, "imgs/digit_2.png", "imgs/digit_3.png", "--output", "out.jsonl",
                       "--resume", cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming, 1 input(s) already done" in resumed.stdout  # once "3 input(s)": the file's lines
    assert resumed.stderr == ""
    assert _recorded(tmp_path / "out.jsonl")[3:] == ["imgs/digit_3.png"]


def test_a_resume_from_another_folder_that_matches_nothing_recorded_warns_in_one_line(tmp_path: Path) -> None:
    _samples(tmp_path, range(2))
    first = _edgerun("predict", MODEL, "imgs", "--output", "out.jsonl", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # from inside imgs/, "imgs/digit_0.png" names imgs/imgs/digit_0.png: nothing recorded is among these inputs
    resumed = _edgerun("predict", MODEL, ".", "--output", "../out.jsonl", "--resume", "--json", cwd=tmp_path / "imgs")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.splitlines() == [
        "edgerun: warning: none of the 2 input(s) recorded in ../out.jsonl is among these inputs; a relative path "
        "is taken from the current folder, so run from the folder of the run that recorded them"
    ]
    assert len(resumed.stdout.splitlines()) == 2  # run again, as asked: the warning says why


def test_a_resume_with_nothing_left_to_do_says_so_without_a_warning(tmp_path: Path) -> None:
    _samples(tmp_path, range(2))
    first = _edgerun("predict", MODEL, "imgs", "--output", "out.jsonl", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = _edgerun("predict", MODEL, "imgs", "--output", "out.jsonl", "--resume", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming, 2 input(s) already done" in resumed.stdout
    assert "warning" not in resumed.stderr


def test_a_file_that_collects_one_batch_after_another_resumes_over_new_inputs_without_a_warning(
    tmp_path: Path,
) -> None:
    """The recorded relative paths still name files from here: the inputs are new, not moved."""
    _samples(tmp_path, range(2))
    (tmp_path / "day2").mkdir()
    (tmp_path / "imgs" / "digit_1.png").rename(tmp_path / "day2" / "digit_1.png")
    first = _edgerun("predict", MODEL, "imgs", "--output", "all.jsonl", "--no-progress", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    second = _edgerun("predict", MODEL, "day2", "--output", "all.jsonl", "--resume", "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    assert _recorded(tmp_path / "all.jsonl") == ["imgs/digit_0.png", "day2/digit_1.png"]


def test_a_torn_line_is_not_cut_from_a_file_that_changed_after_it_was_read(tmp_path: Path) -> None:
    """The model loads between the reading and the cut: records another process appended meanwhile stay."""
    from edgerun.cli.predict import cut_torn_line, recorded_inputs
    from edgerun.errors import ConfigError

    out = tmp_path / "out.jsonl"
    out.write_text('{"input": "a.png", "model": "digits", "version": "1.0.0", "output": []}\n{"input": "b.p')
    recorded = recorded_inputs(str(out))
    with out.open("a") as other:
        other.write('ng", "model": "digits", "version": "1.0.0", "output": []}\n')
    changed = out.read_bytes()
    with pytest.raises(ConfigError, match=r"out\.jsonl changed while the model loaded; cannot resume from it"):
        cut_torn_line(str(out), recorded)
    assert out.read_bytes() == changed
    cut_torn_line(str(out), recorded_inputs(str(out)))  # read again: nothing torn, nothing cut
    assert out.read_bytes() == changed
