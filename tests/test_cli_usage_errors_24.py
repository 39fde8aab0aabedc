"""A mistyped command line is one ``edgerun: error:`` line (exit 2), not argparse's usage block."""

from __future__ import annotations

import pytest

from tests.conftest import DIGITS, SAMPLES, run_cli

MODEL = str(DIGITS / "digits_int8.onnx")
IMAGE = str(SAMPLES / "digit_3.png")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ("predict", MODEL, IMAGE, "--top-k", "1.5"),
            "argument --top-k: invalid int value: '1.5' (see edgerun predict --help)",
        ),
        (("run", MODEL, "--fps", "abc"), "argument --fps: invalid float value: 'abc' (see edgerun run --help)"),
        (
            ("run", MODEL, "--source", IMAGE, "--batch-size", "x"),
            "argument --batch-size: invalid int value: 'x' (see edgerun run --help)",
        ),
        (("run", MODEL), "the following arguments are required: --source (see edgerun run --help)"),
        (
            ("predict", MODEL, IMAGE, "--delegate"),
            "argument --delegate: expected one argument (see edgerun predict --help)",
        ),
        # an option the command does not know names the command, not edgerun, in its pointer to --help
        (("predict", MODEL, IMAGE, "--bogus", "1"), "unrecognized arguments: --bogus 1 (see edgerun predict --help)"),
        (("config", "check", "a.yaml", "b.yaml"), "unrecognized arguments: b.yaml (see edgerun config check --help)"),
        (("config",), "the following arguments are required: ACTION (see edgerun config --help)"),
        (("keys", "gen"), "argument ACTION: invalid choice: 'gen' (choose from 'generate') (see edgerun keys --help)"),
        ((), "the following arguments are required: COMMAND (see edgerun --help)"),
        (("--bogus", "predict", MODEL, IMAGE), "unrecognized arguments: --bogus (see edgerun --help)"),
    ],
)
def test_a_mistyped_command_line_is_one_error_line_with_a_pointer_to_help(argv: tuple[str, ...], line: str) -> None:
    done = run_cli(*argv)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"edgerun: error: {line}\n"


def test_an_unknown_command_is_one_line_that_lists_the_commands() -> None:
    done = run_cli("frobnicate", MODEL)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "usage:" not in done.stderr
    assert done.stderr.startswith("edgerun: error: argument COMMAND: invalid choice: 'frobnicate' (choose from ")
    assert "'predict', 'run'" in done.stderr and done.stderr.endswith(" (see edgerun --help)\n")


def test_a_value_with_a_line_break_stays_one_line() -> None:
    done = run_cli("predict", MODEL, IMAGE, "--bogus\nedgerun:")
    assert done.returncode == 2
    assert done.stderr == "edgerun: error: unrecognized arguments: --bogus\\nedgerun: (see edgerun predict --help)\n"


@pytest.mark.parametrize("argv", [("--help",), ("predict", "--help"), ("run", "-h"), ("config", "check", "--help")])
def test_help_is_still_the_full_help_on_stdout(argv: tuple[str, ...]) -> None:
    done = run_cli(*argv)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: edgerun") and "options:" in done.stdout
