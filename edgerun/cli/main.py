"""Entry point: builds the parser from the command modules and turns errors into exit codes.

Exit codes: 0 success, 1 a run in which something failed, 2 a usage or config
error, 130 interrupted. An ``EdgerunError`` becomes one line on stderr, and so does a
stdout that refuses output (``cannot write stdout: No space left on device``, exit 1: the commands'
own lines go through ``edgerun.sinks.text.write_stdout``; a ``print`` that fills stdout's buffer is caught
here); a traceback appears only for bugs (or with ``--debug``). A command line argparse refuses (a value of
the wrong type, a missing or unknown option, an unknown command) is one line too, exit 2, with a pointer to
the help of the command that refused it, not argparse's usage block: ``--help`` is where the usage is.
A standard descriptor closed at the start (``>&-``, ``2>&-``) is given ``/dev/null`` before anything runs
(``_hold_stdio``): no file takes its number, stderr's lines are thrown away, and stdout still refuses writes.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from importlib import import_module
from typing import Any, NoReturn

from edgerun import __version__, opencv
from edgerun.cli.common import error_line
from edgerun.errors import EdgerunError

#: command -> module. A command's module is imported only when it runs (or for
#: the top-level --help), so ``edgerun predict`` does not pay for the others.
COMMANDS: dict[str, str] = {
    "predict": "edgerun.cli.predict",
    "run": "edgerun.cli.run",
    "devices": "edgerun.cli.devices",
    "bench": "edgerun.cli.bench",
    "mqtt": "edgerun.cli.mqtt",
    "keys": "edgerun.cli.keys",
    "ota": "edgerun.cli.ota",
    "daemon": "edgerun.cli.daemon",
    "outbox": "edgerun.cli.outbox",
}

#: commands that another command's module registers, by that command
_REGISTERED_WITH = {"config": "daemon"}


class _Parser(argparse.ArgumentParser):
    """``edgerun``'s parser: what it refuses is one line on stderr, exit 2, in the form of every user error.

    argparse's own form is the usage block (13-15 lines for ``run``) above
    ``edgerun run: error: ...``: the one line that matters ends up last, under a wall of options.
    """

    def error(self, message: str) -> NoReturn:
        error_line(f"{message} (see {self.prog} --help)")
        self.exit(2)


class _CommandParser(_Parser):
    """A command's parser (``edgerun predict``, ``edgerun config check``): it refuses the arguments it does
    not know itself. argparse hands them up to ``edgerun``'s parser, whose line would point at ``edgerun
    --help``, which does not list the command's options. Nothing parses after a command: the options
    before it are ``edgerun``'s, so what a command leaves is never anyone's."""

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> tuple[Any, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``edgerun`` parser; sub-commands other than ``command`` get a stub parser.

    Its command parsers, and theirs (``config check``), are ``_CommandParser``s: ``add_subparsers``
    makes its parsers of the class of the parser it is called on.
    """
    parser = _Parser(
        prog="edgerun",
        description="Run quantized ML models on edge devices, on the best accelerator they have.",
    )
    parser.add_argument("--version", action="version", version=f"edgerun {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-v info, -vv debug)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True
    for name, module in COMMANDS.items():
        if command in (None, name):
            import_module(module).register(sub)
        else:
            sub.add_parser(name, add_help=False)  # a stub: that command is not being run
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command(argv)).parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    opencv.quiet()  # one line per error: not OpenCV's and FFmpeg's own lines too
    try:
        return int(args.run(args))
    except EdgerunError as exc:
        if args.debug:
            raise
        error_line(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a print() of a command's table to a full disk, or /dev/full
        if args.debug or not _stdout_refuses():
            raise
        _drop_stdout()
        error_line(f"cannot write stdout: {exc.strerror or exc}")
        return 1


def _stdout_refuses() -> bool:
    """Whether stdout refuses what it holds: after a failed ``print`` its buffer still holds the text,
    and a second flush fails the same way. An ``OSError`` that stdout did not cause is a bug, and the
    flush then succeeds (or there was nothing to flush), so it stays a traceback."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return False
    except (OSError, ValueError):
        return True
    return False


def _drop_stdout() -> None:
    """Send what stdout still holds, and anything written later, to ``/dev/null``: the interpreter
    flushes stdout as it exits, and a failure there is a traceback-like "Exception ignored" block."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, sys.stdout.fileno())
        finally:
            os.close(null)
    except (OSError, ValueError, AttributeError):  # no descriptor to point elsewhere
        pass


def _hold_stdio() -> None:
    """Give each of descriptors 0, 1 and 2 that is closed (``edgerun ... >&- 2>&-``) ``/dev/null``, as daemons
    do, before anything opens a file; and ``sys.stdout`` and ``sys.stderr``, which Python left None, a stream.

    A closed descriptor's number is the next one ``open`` hands out: a sink file opened as 1 got every line
    meant for stdout, one opened as 2 every error line and log record; and a write to a None stream was an
    ``AttributeError``. Now:

    - 2 is ``/dev/null`` for writing: error lines and logs are thrown away, and the run goes on as it does
      with them shown (every input processed, the usual exit code).
    - 1 is ``/dev/null`` for reading only: a write to it still fails with ``EBADF``, as on the closed
      descriptor, so a command whose output is stdout fails as on ``/dev/full`` (``cannot write stdout:
      Bad file descriptor``, exit 1; ``predict`` says ``standard output is closed`` before anything runs),
      never throws its output away with exit 0; and one whose output goes to files (``run --sink x.csv``,
      the daemon) runs as ever.
    - 0 is ``/dev/null`` for reading, and ``sys.stdin`` stays None: Python's sign that there was none,
      by which ``run --source -`` says that standard input is closed rather than reading nothing.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:  # closed
            pass
        null = os.open(os.devnull, os.O_WRONLY if fd == 2 else os.O_RDONLY)  # the lowest free number: fd's
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        os.set_inheritable(fd, True)  # a standard descriptor, as a child process expects it
    # the process's own streams, as Python makes them: never closed (closefd=False), stderr a line at a time
    if sys.stdout is None:
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(  # noqa: SIM115
            2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False
        )


def _command(argv: Sequence[str]) -> str | None:
    """The command whose module parses ``argv``: its first word that is no option (the options before a command
    take no value), not its first word that names a command (``edgerun config check predict`` checks a file
    named ``predict``); None for none known, which the full parser then names."""
    word = next((a for a in argv if not a.startswith("-")), None)
    if word in COMMANDS:
        return word
    return _REGISTERED_WITH.get(word or "")


def entry() -> NoReturn:
    """The ``edgerun`` console script: :func:`main`, then a quick exit.

    Once a command has returned, its outputs are flushed and the exit handlers run
    (logging's among them), and the process ends with ``os._exit``: tearing down the
    ~300 modules a run has imported (NumPy, OpenCV, the runtimes) is work nobody
    waits for, about 7-10 ms of every ``edgerun predict``. Where another thread that
    is not a daemon thread is still alive, the ordinary exit runs instead, so nothing
    is cut short. Daemon threads are not waited for by either exit, and this one
    leaves them no interpreter to die in: one left behind in a native call (a stream's
    connection attempt abandoned at a stop, a capture thread hung in a read) that
    returns while the interpreter is torn down aborts the process (exit -6 or -11).
    """
    _hold_stdio()
    try:
        code = main()
    except SystemExit as exc:  # argparse's, after --help or --version: what they printed is flushed below too
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader went away; nothing more to say
        _drop_stdout()
        code = code or 1
    except OSError as exc:  # a full disk took the last of it: one line, as for any failed write there
        _drop_stdout()
        error_line(f"cannot write stdout: {exc.strerror or exc}")
        code = code or 1
    sys.stderr.flush()
    if all(t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        atexit._run_exitfuncs()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
