"""``predict --resume`` says how many of *these* inputs were done (it said how many the file names),
and warns when none of the recorded ones is among them (a run resumed from another folder, whose
relative paths name other files)."""

from __future__ import annotations

from pathlib import Path

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
