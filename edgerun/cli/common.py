"""Options shared by the commands that load models, and output helpers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = [
    "STATE_DIR_HELP",
    "add_model_options",
    "add_mqtt_options",
    "check_folders",
    "elapsed_text",
    "error_line",
    "load_kwargs",
    "make_sync",
    "mqtt_settings",
    "print_json",
    "print_lines",
    "rate_text",
    "report_failure",
    "require_at_least_one",
    "require_not_empty",
    "require_positive",
    "require_tls_files_named",
    "require_within",
    "run_pipeline",
    "start_ota",
    "start_sync",
]


#: ``--state-dir``'s help: the order ``edgerun.state.state_dir`` resolves one in.
STATE_DIR_HELP = (
    "where caches, the outbox and OTA models live (default: $EDGERUN_STATE_DIR, else $XDG_STATE_HOME/edgerun, "
    "else ~/.local/state/edgerun)"
)


def add_model_options(parser: argparse.ArgumentParser, *, delegate_help: str | None = None) -> None:
    """--delegate, --threads, --strict-accelerator, --no-verify, --state-dir, --probe-root."""
    parser.add_argument(
        "--delegate",
        default="auto",
        metavar="D",
        help=delegate_help
        or "auto (default: best that works), fastest (time them all, cache the winner), "
        "or a name: cpu, xnnpack, edgetpu, gpu, cuda, tensorrt, openvino, ...",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: 1 for tiny models, else up to 4)"
    )
    parser.add_argument(
        "--strict-accelerator",
        action="store_true",
        help="fail instead of falling back from an accelerator that is present",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip checking an accelerated delegate's outputs against the CPU"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help=STATE_DIR_HELP,
    )
    parser.add_argument(
        "--probe-root",
        default=None,
        metavar="DIR",
        help="filesystem root to probe for accelerators (default: /; for containers and tests)",
    )


def check_folders(args: argparse.Namespace) -> None:
    """Refuse an empty or non-directory --probe-root, and an empty --state-dir or one that is not a directory.

    Every command that takes ``add_model_options`` comes through here (``load_kwargs``), so an
    empty string reads the same everywhere: "--probe-root is an empty string", not "is not a directory".
    """
    import os

    from edgerun.errors import ConfigError

    require_not_empty("--probe-root", args.probe_root)  # else "--probe-root  is not a directory"
    require_not_empty("--state-dir", args.state_dir)  # "" would quietly mean the default state directory
    if args.probe_root is not None and not os.path.isdir(args.probe_root):
        raise ConfigError(f"--probe-root {args.probe_root} is not a directory")
    # `~` as edgerun.state.state_dir expands it (quoted, or after `--state-dir=`, no shell did)
    folder = None if args.state_dir is None else os.path.expanduser(args.state_dir)
    if folder is not None and os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"--state-dir {args.state_dir} is not a directory")


def load_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``edgerun.load`` from the shared options (checked)."""
    from edgerun.limits import THREADS_MAX

    if args.threads is not None and not 1 <= args.threads <= THREADS_MAX:
        from edgerun.errors import ConfigError

        raise ConfigError(f"--threads must be between 1 and {THREADS_MAX}, got {args.threads}")
    check_folders(args)
    return {
        "delegate": args.delegate,
        "threads": args.threads,
        "strict": args.strict_accelerator,
        "verify": not args.no_verify,
        "state_dir": args.state_dir,
        "probe_root": args.probe_root,
    }


def require_at_least_one(args: argparse.Namespace, *names: str) -> None:
    """Refuse, in one line, any of the counting options ``names`` that is given and below 1."""
    from edgerun.errors import ConfigError

    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Refuse, in one line, any of the number options ``names`` that is given and not a positive finite number."""
    import math

    from edgerun.errors import ConfigError

    for name in names:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {value:g}")


def require_within(args: argparse.Namespace, **limits: tuple[float, float]) -> None:
    """Refuse, in one line, any option ``name=(low, high)`` that is given and outside ``[low, high]`` (or NaN)."""
    from edgerun.errors import ConfigError

    for name, (low, high) in limits.items():
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            raise ConfigError(
                f"--{name.replace('_', '-')} must be between {_number(low)} and {_number(high)}, got {_number(value)}"
            )


def _number(value: float) -> str:
    """``value`` as an option takes it: whole numbers in full (1048576, not 1.04858e+06), others as %g."""
    if isinstance(value, int) or (value == value and abs(value) < 1e15 and float(value).is_integer()):
        return str(int(value))
    return f"{value:g}"


def elapsed_text(seconds: float) -> str:
    """A run's wall time for a summary line, to three significant figures: ``3.21 ms`` under a second,
    ``4.56 s`` or ``1234 s`` above, so that a quick run never reads ``0.00 s``."""
    if seconds < 0.9995:  # what rounds to 1000 ms reads 1 s
        return f"{_figure(seconds * 1000)} ms"
    return f"{_figure(seconds)} s"


def rate_text(rate: float, unit: str) -> str | None:
    """A summary line's rate of inputs that succeeded (``1560 inputs/s``, ``12.3 fps``); None where it is 0
    (nothing succeeded: a rate of failures is no throughput)."""
    return f"{_figure(rate)} {unit}" if rate > 0 else None


def _figure(value: float) -> str:
    """``value`` to three significant figures (``0.0412``, ``3.20``, ``412``), whole numbers from 1000 on."""
    return f"{value:.0f}" if value >= 999.5 else f"{value:#.3g}".rstrip(".")  # `#`: 3.20, not 3.2; 412, not 412.


def require_not_empty(what: str, *values: str | None) -> None:
    """Refuse an empty string given for ``what``: a path left empty must not quietly mean the current directory."""
    from edgerun.errors import ConfigError

    if any(value == "" for value in values):
        raise ConfigError(f"{what} is an empty string")


def print_json(record: Any) -> None:
    """One JSON object on one line of stdout, written at once: on a file, whole or not at all.

    Raises:
        EdgerunError: stdout cannot take it (a full disk, ``/dev/full``), naming stdout.
        BrokenPipeError: the reader of stdout went away (``| head``), which ``main`` ends on quietly.
    """
    import json  # only JSON output needs it: a one-image table run does not pay for it

    print_lines(json.dumps(record, separators=(", ", ": ")))


def print_lines(*lines: str) -> None:
    """Lines of text on stdout, written at once: on a file, whole or not at all.

    Raises:
        EdgerunError: stdout cannot take them (a full disk, ``/dev/full``), naming stdout.
        BrokenPipeError: the reader of stdout went away (``| head``), which ``main`` ends on quietly.
    """
    from edgerun.sinks.text import write_stdout

    write_stdout("".join(line + "\n" for line in lines))


def error_line(message: str) -> None:
    """One line on stderr, the form every user error takes."""
    from edgerun.errors import shown

    sys.stderr.write(f"edgerun: error: {shown(message)}\n")


def report_failure(result: Any) -> None:
    """Pipeline callback: one stderr line for each input that failed."""
    if not result.ok:
        error_line(result.record["error"])


def add_mqtt_options(parser: argparse.ArgumentParser, *, results: bool = True, ota: bool = True) -> None:
    """--mqtt URL and its TLS, identity and publishing options (and, with ``ota``, the OTA ones)."""
    g = parser.add_argument_group("MQTT sync")
    g.add_argument(
        "--mqtt",
        default=None,
        metavar="URL",
        help="publish status, metrics (and results) to this broker: mqtt[s]://[user@]host[:port]; "
        "the password may come from $EDGERUN_MQTT_PASSWORD",
    )
    g.add_argument("--mqtt-ca", default=None, metavar="FILE", help="CA certificate that signed the broker's")
    g.add_argument("--mqtt-cert", default=None, metavar="FILE", help="client certificate (mutual TLS)")
    g.add_argument("--mqtt-key", default=None, metavar="FILE", help="client key (mutual TLS)")
    g.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5", help="MQTT version (default 5)")
    g.add_argument("--mqtt-prefix", default="edgerun", metavar="P", help="topic prefix (default edgerun)")
    g.add_argument("--device-id", default=None, metavar="ID", help="device id (default: from /etc/machine-id)")
    g.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="G",
        help="a group this device belongs to (repeatable): it takes group manifests and commands",
    )
    if results:
        g.add_argument(
            "--metrics-interval", type=float, default=10.0, metavar="S", help="seconds between metrics records"
        )
    if results and ota:
        g.add_argument(
            "--ota-key",
            action="append",
            default=[],
            metavar="PUB.pem",
            help="accept OTA updates signed by this Ed25519 public key (repeatable; needs --mqtt)",
        )
        g.add_argument(
            "--ota-max-bytes",
            type=int,
            default=256 * 1024 * 1024,
            metavar="N",
            help="refuse model updates larger than this (default 256 MiB)",
        )
        g.add_argument("--ota-keep", type=int, default=2, metavar="N", help="previous versions kept (default 2)")
    if results:
        g.add_argument("--publish-results", action="store_true", help="also publish every result")
        g.add_argument("--results-qos", type=int, choices=(0, 1), default=1, help="QoS of results (default 1)")
        g.add_argument(
            "--results-rate",
            type=float,
            default=None,
            metavar="N",
            help="at most N results per second (the rest are skipped and counted)",
        )


def require_tls_files_named(args: argparse.Namespace) -> None:
    """Refuse an empty ``--mqtt-ca``, ``--mqtt-cert`` or ``--mqtt-key``: "" names no file, and is no option left out.

    Once "MQTT ca file not found: " (naming nothing), or "mutual TLS needs both a client
    certificate and its key" for a certificate and a key both given.
    """
    require_not_empty("--mqtt-ca", args.mqtt_ca)
    require_not_empty("--mqtt-cert", args.mqtt_cert)
    require_not_empty("--mqtt-key", args.mqtt_key)


def mqtt_settings(args: argparse.Namespace) -> Any:
    """``MqttSettings`` from the command line's MQTT options."""
    from edgerun.sync.settings import MqttSettings

    require_tls_files_named(args)
    return MqttSettings.from_url(
        args.mqtt,
        ca_file=args.mqtt_ca,
        cert_file=args.mqtt_cert,
        key_file=args.mqtt_key,
        protocol=args.mqtt_protocol,
        topic_prefix=args.mqtt_prefix,
    )


def check_stdout_open(why: str) -> None:
    """Refuse a run before anything runs where standard output is closed and the command writes its results
    there (``why`` says so): every write would fail as on ``/dev/full`` (``cannot write stdout``, exit 1), once
    the model had loaded. The CLI's entry gives a closed descriptor 1 ``/dev/null`` open for reading only
    (``edgerun.cli.main._hold_stdio``), where writes fail as they did: that counts as closed. A stand-in
    ``sys.stdout`` with no descriptor (a ``StringIO``) takes what is written: it is not refused.

    Raises:
        PipelineError: standard output is closed (exit 1, as a stdout that refuses a write).
    """
    import fcntl

    from edgerun.errors import PipelineError

    try:
        fd = sys.stdout.fileno()
    except AttributeError:  # None: Python found no descriptor 1 (main() called without the CLI's entry)
        fd = -1
    except ValueError:  # a stand-in with no descriptor (io.UnsupportedOperation), or one closed since
        return
    try:
        writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
    except OSError:  # no such descriptor
        writable = False
    if not writable:
        raise PipelineError(f"standard output is closed: {why} (>FILE keeps them, >/dev/null throws them away)")


def check_sync(args: argparse.Namespace) -> tuple[Any, str] | None:
    """The MQTT settings and device id of ``--mqtt`` and its options, refused now if wrong; None without it.

    Commands call it before loading a model, so a mistyped URL is the first and only line.
    """
    from edgerun.errors import ConfigError

    require_not_empty("--mqtt", args.mqtt)  # "" would quietly mean no broker: a run that publishes nothing
    if not args.mqtt:
        if getattr(args, "publish_results", False):  # else nothing would say that no result goes anywhere
            raise ConfigError("--publish-results needs an MQTT broker (--mqtt URL)")
        return None
    from edgerun.device import default_device_id
    from edgerun.sync.topics import METRICS_INTERVAL_MAX_S, METRICS_INTERVAL_MIN_S, check_name, check_prefix

    require_positive(args, "metrics_interval", "results_rate")
    # as the config's mqtt.metrics_interval_s: a shorter interval is a busy loop of outbox writes and publishes
    require_within(args, metrics_interval=(METRICS_INTERVAL_MIN_S, METRICS_INTERVAL_MAX_S))
    # "" is refused as the name it is not, rather than quietly meaning the default id
    device_id = check_name("device", args.device_id) if args.device_id is not None else default_device_id()
    for group in args.group:
        check_name("group", group)
    settings = mqtt_settings(args)
    check_prefix(settings.topic_prefix)  # the config's rule and cap; Topics would refuse it only once the model loaded
    if settings.tls:
        settings.check_tls_files()
    if getattr(args, "results_rate", None) is not None and not getattr(args, "publish_results", False):
        raise ConfigError("--results-rate limits published results: it needs --publish-results")
    return settings, device_id


def check_ota(args: argparse.Namespace, checked: tuple[Any, str] | None) -> None:
    """Refuse now, before the model loads or the broker is dialled, OTA options that cannot work."""
    from edgerun.errors import ConfigError

    require_within(args, ota_keep=(1, 20), ota_max_bytes=(1, 100_000 * 1024 * 1024))  # as the config's ota keys
    require_not_empty("--ota-key", *args.ota_key)  # else "cannot read trusted key : Is a directory"
    if not args.ota_key:
        return
    if checked is None:
        raise ConfigError("OTA updates (--ota-key) need an MQTT broker (--mqtt)")
    from edgerun.ota.envelope import TrustedKeys

    TrustedKeys.load(args.ota_key)  # a missing or wrong key file: one line, now


def start_sync(args: argparse.Namespace, checked: tuple[Any, str] | None, metrics: Any, models: list[Any]) -> Any:
    """A started ``SyncService`` from what ``check_sync`` returned, else (no ``--mqtt``) None."""
    service = make_sync(args, checked, metrics, models)
    if service is not None:
        service.start()
    return service


def make_sync(args: argparse.Namespace, checked: tuple[Any, str] | None, metrics: Any, models: list[Any]) -> Any:
    """A ``SyncService`` not started yet (its outbox open, no connection), else (no ``--mqtt``) None.

    For a command that subscribes before the link connects (``start_ota``): the broker delivers
    what it kept for the device's persistent session right after CONNACK, and the link drops a
    message no handler is registered for. Its ``stop()`` works whether it started or not.
    """
    if checked is None:
        return None
    from edgerun.accel.probe import probe
    from edgerun.state import state_dir
    from edgerun.sync.service import SyncService

    settings, device_id = checked
    service = SyncService(
        settings,
        device_id=device_id,
        state_dir=state_dir(args.state_dir),
        metrics=metrics,
        interval_s=args.metrics_interval,
        results_qos=getattr(args, "results_qos", 1),
        results_max_per_s=getattr(args, "results_rate", None),
    )
    service.set_models(
        {m.name: {"version": m.version, "format": m.format, "delegate": m.delegate} for m in models},
        probe(args.probe_root or "/").accelerators(),
    )
    service.set_groups(args.group)
    return service


#: After the input ended, how long a run goes on delivering its queued records at most, while the
#: broker takes them (an acknowledgement at least every ``DELIVER_STALLED_S``); SIGINT/SIGTERM cut it short.
DELIVER_MAX_S = 300.0
DELIVER_STALLED_S = 5.0


def run_pipeline(pipeline: Any, sync: Any = None, ota: Any = None, signalled: Any = None) -> Any:
    """Run a pipeline with SIGINT/SIGTERM stopping it cleanly; then stop OTA and the sync (flushing it).

    Stopped by a signal, the sync gets the 5 s of ``SyncService.stop`` (a service manager expects
    a quick stop). When the input ended (or ``--max-frames`` was reached), delivering what the run
    queued is its last job: it waits while the broker takes records (``SyncService.deliver``), up
    to ``DELIVER_MAX_S``, saying so on stderr if that takes more than a second; a signal then
    ends the wait, and what is left stays in the outbox for the next start. The signals stay
    handled until everything is stopped. ``signalled``: an event a signal set before this call (``run``'s,
    while its source opened and the run was made), so that such a stop is a stop, not an input's end.
    A SIGINT ignored when the command started (a background job's) stays ignored (``edgerun.signals``).
    """
    import signal
    import threading

    from edgerun import signals

    signalled = signalled if signalled is not None else threading.Event()
    ran = threading.Event()

    def stop(sig: signal.Signals) -> None:
        signalled.set()
        if not ran.is_set():  # a signal during the delivery ends the wait; the summary keeps its reason
            pipeline.stop(sig.name)

    with signals.handled({signal.SIGINT: stop, signal.SIGTERM: stop}):
        ended = False
        try:
            summary = pipeline.run()
            ended = not signalled.is_set()
        finally:
            ran.set()
            if ota is not None:
                ota.stop()
            if sync is not None:
                if ended:
                    try:
                        _deliver(sync, signalled)
                    finally:  # 2 s for the last metrics record: the backlog was given its time
                        sync.stop(flush_timeout_s=2.0)
                else:
                    sync.stop()
    return summary


def _deliver(sync: Any, cancel: Any) -> None:
    """Deliver the queued records of a run whose input ended (``DELIVER_MAX_S`` at most, or until ``cancel``)."""
    left = sync.deliver(max_s=1.0, stalled_s=DELIVER_STALLED_S, cancel=cancel)
    if left and (sync.link.connected or sync.link.last_error is None) and not cancel.is_set():
        sys.stderr.write(
            f"# MQTT: delivering {left} queued record(s) before exiting (at most {DELIVER_MAX_S:g} s; "
            "Ctrl-C or SIGTERM leaves them in the outbox for the next start)\n"
        )
        sys.stderr.flush()
        sync.deliver(max_s=DELIVER_MAX_S - 1.0, stalled_s=DELIVER_STALLED_S, cancel=cancel)


def start_ota(args: argparse.Namespace, sync: Any, slot: Any, metrics: Any) -> Any:
    """A started ``OtaAgent`` when ``--ota-key`` was given (with ``--mqtt``), else None.

    Called before ``sync.start()`` (``make_sync``): the agent subscribes before the link connects,
    so the manifests and commands the broker kept for the device while it was offline reach it.
    """
    if not getattr(args, "ota_key", None):
        return None
    from edgerun.errors import ConfigError
    from edgerun.ota.agent import OtaAgent, OtaSettings
    from edgerun.ota.store import ModelStore
    from edgerun.state import state_dir

    if sync is None:
        raise ConfigError("OTA updates (--ota-key) need an MQTT broker (--mqtt)")
    root = state_dir(args.state_dir)
    agent = OtaAgent(
        OtaSettings(trusted_keys=tuple(args.ota_key), max_bytes=args.ota_max_bytes, keep=args.ota_keep),
        link=sync.link,
        topics=sync.topics,
        groups=tuple(args.group),
        store=ModelStore(root / "models", args.ota_keep),
        slots={slot.name: slot},
        metrics=metrics,
        state_dir=root,
        load_model=model_loader(args),
    )
    agent.start()
    return agent


def model_loader(args: argparse.Namespace) -> Any:
    """``load(path, card)`` with the command line's delegate options."""
    import edgerun

    kwargs = load_kwargs(args)
    return lambda path, card: edgerun.load(path, card=card, **kwargs)


def mqtt_figures(sync: Any, results: Any) -> dict[str, Any] | None:
    """What went to the broker, beside the frames: results queued, results over ``--results-rate``
    (never published), records the broker refused (an ACL, its packet size: dropped from the outbox,
    lost) and records it had not acknowledged at exit (left in the outbox); ``refused`` is None where
    the outbox's count could not be read."""
    if sync is None:
        return None
    figures: dict[str, Any] = {
        "undelivered": sync.undelivered,
        "refused": sync.refused,
        "outbox": str(sync.outbox.path),
    }
    if results is not None:
        figures["results"] = results.queued
        figures["results_skipped"] = results.skipped
    return figures


def mqtt_line(published: dict[str, Any]) -> str:
    """``mqtt_figures`` as the summary's ``# MQTT:`` line: "everything delivered" only where the
    broker accepted every record and none is left in the outbox."""
    parts = []
    if "results" in published:
        parts.append(f"{published['results']} results queued, {published['results_skipped']} over --results-rate")
    refused, left = published["refused"], published["undelivered"]
    if refused:
        parts.append(f"{refused} record(s) refused by the broker (its ACL or packet size limit), dropped")
    if left:
        parts.append(f"{left} record(s) not delivered, kept in {published['outbox']} for the next start")
    elif left == 0 and refused == 0:
        parts.append("everything delivered")
    elif left == 0 and refused is None:  # the outbox's count could not be read (its ERROR line says why)
        parts.append("every record queued left the outbox; how many the broker refused is unknown")
    return f"# MQTT: {'; '.join(parts)}"
