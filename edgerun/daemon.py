"""``edgerun daemon``: models, pipelines, MQTT sync, OTA and the HTTP API, for months, unattended.

Wiring and life cycle only; every part is its own module. Signals:

* SIGTERM, SIGINT: stop cleanly: sources closed, in-flight frames finished and
  flushed, the API stops accepting and answers the requests in progress (for up
  to ``API_GRACE_S``) before the process goes on to exit (interpreter teardown
  with a thread still in OpenCV or a runtime aborts the process), OTA stops (a
  download resumes next start), the outbox is flushed as far as the broker
  allows and ``offline`` published. An isolated model the OTA agent swaps in while
  the daemon stops has its worker stopped too (``_stop_workers``).
* SIGHUP: re-read the config file; models and pipelines that changed are
  reloaded without dropping requests (a new model is loaded and warmed, then
  swapped in); a model changed on disk (its file or card: size, mtime, inode)
  counts as changed, and the pipelines on a model whose ``publish_results``
  changed are restarted (the results sink is chosen when a pipeline starts);
  a broken file is logged and the running config kept, as is a reload that
  fails with a bug. Changes to the device, MQTT, OTA or API sections (and
  ``logging.format``) are logged as needing a restart. systemd is told (RELOADING=1,
  READY=1) and its watchdog kept fed while the reload runs.
  A model is chosen by the one function used at start (``_serve``): with OTA
  on, the store's active version wins over the config's ``path``, so a reload
  reloads the version installed over the air, with the new settings; a file changed
  on disk that the store's copy serving still wins over leaves that model in place.
  A model or pipeline new in the file is said to be added, not reloaded or restarted.

The state directory (``edgerun.state.check_state_dir``) and the secret files
(``api.token_file``, ``mqtt.password_file``, ``ota.trusted_keys``) are checked first: one ``ConfigError``
line naming the config file, the path and the reason, before anything is loaded. Then the API's
port is taken (``_listen``), before any model loads, any pipeline reads an input or the link
connects: a port in use stops the start with nothing done. The API is served last, once
``ready`` is set, so it never answers for a daemon half started. A config's model file that does
not load is named by its key, as ``config check`` names it (``_load_configured``).

A pipeline whose source fails (a camera unplugged, a stream gone) is reopened
every ``restart_s`` seconds until it comes back; the rest keeps running. What a
failed open had opened is closed again, and a pipeline stopped while its source
opens never runs. A pipeline over files (images, a video, a sensor file: not live) that
fails part way (a full disk under its sink) is retried without the inputs whose results
already reached every sink (error records included), and each sink leaves out the one
result it took before another sink refused it, so none is written or published twice;
a SIGHUP that changes the pipeline starts it afresh. A named pipe given as a sensor
file is read again when its writer closes, for the next writer (standard input ends the
pipeline: nothing can write to it again).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun import signals, systemd
from edgerun.config import Config, ModelConfig, PipelineConfig, check_trusted_keys, load_config
from edgerun.errors import ConfigError, EdgerunError
from edgerun.model import Model
from edgerun.ota.slot import ModelSlot
from edgerun.telemetry.metrics import Metrics

if TYPE_CHECKING:
    from edgerun.ota.store import ModelStore
    from edgerun.sync.publish import ResultsSink

log = logging.getLogger(__name__)

__all__ = ["API_GRACE_S", "RELOAD_WATCHDOG_S", "Daemon"]

#: Seconds a stopping daemon waits for the HTTP requests in progress to be answered.
API_GRACE_S = 30

#: Seconds a SIGHUP reload keeps the systemd watchdog fed; one that takes longer counts as hung.
RELOAD_WATCHDOG_S = 600

#: Seconds a stop waits for the pipelines (all of them together, at a daemon's stop) to finish.
RUNNER_STOP_S = 30


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on ``host``:``port`` for the HTTP API, bound as asyncio's ``create_server`` binds
    them (one per address the name resolves to, ``SO_REUSEADDR``, an IPv6 socket IPv6 only); uvicorn
    serves them later (``_start_api``). Taken before anything starts, so a port in use stops the start
    before a pipeline has read an input or anything was published; listening already, not only bound:
    Linux lets two ``SO_REUSEADDR`` sockets bind one port until one of them listens. A connection made
    meanwhile waits in the backlog and is answered once the API starts.

    Raises:
        EdgerunError: one line with the system's reason: the name does not resolve, the port in use, an
            address not on this machine, a port below 1024 without the right.
    """
    where = f"the HTTP API could not listen on {_url_host(host)}:{port}"
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise EdgerunError(f"{where} ({host} does not resolve to an address: {reason})") from None
    taken: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):  # each address once, in order
            sock = socket.socket(family, kind, proto)
            taken.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen()
    except OSError as exc:
        for sock in taken:
            sock.close()
        raise EdgerunError(f"{where} ({exc.strerror or exc})") from None
    return taken


def _url_host(host: str) -> str:
    """``host`` as a URL writes it: an IPv6 address in brackets (``[::1]``), anything else as it is."""
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:  # a name such as localhost
        return host


#: The sections a SIGHUP does not apply: a change to one is logged as applying at the next restart.
_RESTART_ONLY = ("device", "mqtt", "ota", "api", "state_dir", "isolation")


class _PipelineRunner:
    """Runs one configured pipeline on its own thread, reopening its source after a failure."""

    def __init__(
        self,
        name: str,
        config: PipelineConfig,
        slot: ModelSlot,
        metrics: Metrics,
        results_sink: Callable[[], ResultsSink] | None = None,
    ):
        self.name, self.config, self.slot, self.metrics = name, config, slot, metrics
        #: makes the sink publishing results over MQTT, a new one for each run: a pipeline closes its sinks
        #: when it ends, and a closed one's flusher thread is gone (a retried run's last result waited for
        #: the next one, not 0.2 s, to reach the outbox)
        self._new_results = results_sink
        self._stop = threading.Event()
        self._pipeline: Any = None
        #: the inputs of a file source whose results reached every sink: a retry leaves them out
        self._delivered: set[str] = set()
        #: per sink (by its place in the run's list), the inputs of a file source whose results it took and
        #: not every sink did (a later sink refused one): a retry gives it to the others only
        self._held: list[set[str]] = []
        self.thread = threading.Thread(target=self._run, name=f"pipeline-{name}", daemon=True)
        self.state = "starting"
        #: the current run's sink publishing results over MQTT, if any; its ``skipped`` (shown in the
        #: status) counts from the pipeline's start, across retries
        self.results: ResultsSink | None = None

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        c = self.config
        while not self._stop.is_set():
            try:
                pipeline = self._open()
                self._pipeline = pipeline
                if self._stop.is_set():  # stop() ran while the source opened and saw no pipeline to stop
                    self._discard(pipeline.source, pipeline.sinks)
                    break
                self.state = "running"
                summary = pipeline.run()
                if getattr(pipeline.source, "pipe", False):  # a named pipe: its writer closed; another may come
                    bad_rows = pipeline.source.bad_rows  # the summary's errors also count windows the model failed
                    failed = summary.errors - bad_rows
                    log.info(
                        "pipeline %s: the writer of %s closed after %d windows%s and %d bad rows; waiting for the "
                        "next writer",
                        self.name,
                        pipeline.source.uri,
                        summary.ok,
                        f" ({failed} more failed)" if failed > 0 else "",
                        bad_rows,
                    )
                    continue
                # a file, or a recording served as a stream that came to its end: not played again
                if not pipeline.source.live or getattr(pipeline.source, "ended", False):
                    self.state = "finished"
                    # a retried file source: every input delivered, not only this run's
                    frames = len(self._delivered) or summary.frames
                    log.info("pipeline %s: source ended after %d frames", self.name, frames)
                    self._delivered.clear()
                    self._held.clear()
                    return
            except (EdgerunError, OSError) as exc:  # a source gone, a full disk, a closed standard output
                self.state = "waiting"
                log.warning("pipeline %s: %s; retrying in %.1f s", self.name, exc, c.restart_s)
            except Exception:  # a bug: said with its traceback, and the pipeline still comes back
                self.state = "waiting"
                log.exception("pipeline %s failed unexpectedly; retrying in %.1f s", self.name, c.restart_s)
            if self._stop.wait(c.restart_s):
                break
        self._queue_left()
        self.state = "stopped"

    def _queue_left(self) -> None:
        """At the stop, queue the results the last run's sink could not (the outbox refused their batch, and the
        retry that takes them over, ``ResultsSink.carry_on``, will not come); where the outbox still refuses
        them, one ERROR line says how many are lost."""
        results = self.results
        if results is None or not results.unqueued:
            return
        try:
            results.flush()
        except Exception as exc:  # refused, or the outbox closed already (a runner that outlived the stop's wait)
            log.error("pipeline %s: %d result(s) never queued in the outbox: %s", self.name, results.unqueued, exc)

    def _open(self) -> Any:
        """A new ``Pipeline`` on a freshly opened source and sinks; what was opened is closed if a later part fails
        (a camera left open would stay busy for every retry)."""
        from edgerun.errors import SourceError
        from edgerun.pipeline import Pipeline
        from edgerun.sinks import once_per_input, open_sink, video_rate
        from edgerun.sources import check_fits, gives_images, missing_path, open_configured, without_frames
        from edgerun.sources.sensor import window_for

        c = self.config
        if missing_path(c.source):  # an inbox not made yet: waited for, as a camera not plugged in
            raise SourceError(f"source {c.source}: no such file or folder")
        window = window_for(self.slot.primary, c.window)
        done = frozenset(self._delivered)
        source = open_configured(c.source, c, window, self._stop, skip=done)  # files: left out unread
        sinks: list[Any] = []
        try:
            check_fits(source, self.slot.primary)  # one line now, not one error per window or frame
            if gives_images(source):
                self.slot.primary.warm_images()  # OpenCV's import out of the first frame's latency
            # a file read again after a failure: what it gave before is left out, as from a recording served as a
            # stream (it declares its frame count), which plays from its start again. Not a live source, and not
            # a stream of lines (standard input, a named pipe), whose line numbers start again on new data
            recording = getattr(source, "declared_frames", None) is not None
            again = (not source.live or recording) and not getattr(source, "stream", False)
            if done and again:
                source = without_frames(source, done)  # a video's frames, a sensor file's windows: read, not run
            for spec in c.sinks:
                sinks.append(open_sink(spec, fps=video_rate(c.fps, source)))
            if self._new_results is not None:
                results = self._new_results()
                if self.results is not None:  # counted from the pipeline's start; what the last could not queue first
                    results.carry_on(self.results)
                self.results = results
                sinks.append(results)
            if again:  # each sink is given each input once, whatever another sink refused
                self._held += [set() for _ in sinks[len(self._held) :]]
                sinks = [once_per_input(sink, held) for sink, held in zip(sinks, self._held)]
            return Pipeline(
                source,
                self.slot,
                sinks,
                metrics=self.metrics,
                fps=c.fps,
                batch_size=c.batch_size,
                prepare_workers=c.prepare_workers,
                on_result=self._note_delivered if again else self._report_failure,  # a stream's ids pile up
                others_go_on=False,  # a sink that fails stops them all there: the retry runs the rest, none twice
            )
        except BaseException:
            self._discard(source, sinks)
            raise

    def _discard(self, source: Any, sinks: list[Any]) -> None:
        """Close a source and sinks that will never run; a sink that fails to close is one warning."""
        source.close()
        for sink in sinks:
            try:
                sink.close()
            except Exception as exc:  # the others still get closed
                log.warning("pipeline %s: a sink did not close: %s", self.name, exc)

    def _report_failure(self, result: Any) -> None:
        """One log line per failed frame (a corrupt image, a bad sensor row, a truncated video): the
        sources only yield them as error frames, and here nothing else would say so."""
        if not result.ok:
            log.warning("pipeline %s: %s", self.name, result.record["error"])

    def _note_delivered(self, result: Any) -> None:
        """``_report_failure``, and the input noted as delivered (called once every sink has it), so a
        retry of this file source leaves it out. An error record counts: it was delivered too. One
        string per input (an image, a video frame, a sensor window), and only for sources that are
        not live: a live source's frames are never read twice."""
        self._report_failure(result)
        self._delivered.add(result.frame.source_id)
        for held in self._held:  # every sink has it: no sink needs to remember it any more
            held.discard(result.frame.source_id)

    def stop(self) -> None:
        """Stop and wait for the pipeline (up to ``RUNNER_STOP_S``)."""
        self.request_stop()
        self.join(time.monotonic() + RUNNER_STOP_S)

    def request_stop(self) -> None:
        """Tell the pipeline to stop (its source is closed; what is in flight is finished); returns at once."""
        self._stop.set()
        if self._pipeline is not None:
            self._pipeline.stop("shutdown")

    def join(self, deadline: float) -> None:
        """Wait for the runner's thread until ``deadline`` (``time.monotonic()``); say so if it is still running."""
        self.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.thread.is_alive():
            log.warning("pipeline %s: still stopping after %.0f s; going on without it", self.name, RUNNER_STOP_S)


def _but_publishing(mc: ModelConfig) -> ModelConfig:
    """``mc`` with ``publish_results`` left out of a comparison: that setting needs no new load of the model."""
    return mc.model_copy(update={"publish_results": False})


class Daemon:
    """One edgerun device process."""

    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = Metrics()
        self.slots: dict[str, ModelSlot] = {}
        self.runners: dict[str, _PipelineRunner] = {}
        #: every isolated model ``_load`` made that is still referred to (weakly: one dropped everywhere runs
        #: no request, and a request refers to the model it runs on): those served, an OTA update's between
        #: its load and its swap, and those swapped out or removed that still finish requests (``_stop_workers``)
        self._isolated: weakref.WeakSet[Model] = weakref.WeakSet()
        self._workers_stopped = False  # ``_stop_workers`` ran: a model loaded from then on is stopped at once
        self._workers_lock = threading.Lock()
        #: per model: its config file and card on disk (``_on_disk``) when it was last loaded from them
        self._files: dict[str, tuple[tuple[int, int, int] | None, ...]] = {}
        self.sync: Any = None
        self.ota: Any = None
        self.server: Any = None
        self._api_thread: threading.Thread | None = None
        #: the API's listening sockets, taken first at start (``_listen``) and served once the rest has started
        self._api_sockets: list[socket.socket] = []
        self.api_port: int | None = None
        self.ready = False
        self._claimed = False  # this daemon holds its state directory (claim_state_dir)
        self._stop = threading.Event()
        self._reload = threading.Event()

    @property
    def device_id(self) -> str:
        """``device.id``, else the machine's default (``edge-`` and 12 hex digits), worked out once per process
        (``machine_device_id``): it may log a warning (a transient machine id), which the config's own check,
        each reload and a status poll every 2 s would otherwise repeat."""
        if self.config.device.id:
            return self.config.device.id
        from edgerun.device import machine_device_id

        return machine_device_id()

    # -- parts -------------------------------------------------------------------
    def _state_dir(self) -> Path:
        from edgerun.state import state_dir

        return state_dir(self.config.state_dir)

    def _load(self, name: str, mc: ModelConfig, path: Path | None = None, card: Any = None) -> Model:
        import edgerun
        from edgerun.card import replace
        from edgerun.errors import DelegateError

        order = [mc.delegate] if isinstance(mc.delegate, str) else list(mc.delegate)
        if self.config.isolation.mode == "process":
            # ``auto`` in the order stands for the delegates the worker's selection ranks usable: a worker
            # that keeps crashing moves down them to the CPU (edgerun.isolation), never loaded in the daemon
            from edgerun.isolation import load_isolated

            model = load_isolated(
                path or mc.path,
                delegates=order,
                threads=mc.threads,
                state_dir=self.config.state_dir,
                strict=mc.strict_accelerator,
                card=card,
                start_timeout_s=self.config.isolation.start_timeout_s,
            )
            if model.name != name:
                model.card = replace(model.card, name=name)
            self._track(model)
            return model
        for i, delegate in enumerate(order):  # the configured preference order: the first that works
            try:
                model = edgerun.load(
                    path or mc.path,
                    card=card,
                    delegate=delegate,
                    threads=mc.threads,
                    strict=mc.strict_accelerator,
                    state_dir=self.config.state_dir,
                )
                break
            except DelegateError as exc:
                if i == len(order) - 1:
                    raise
                from edgerun.accel.delegates import accelerator_found

                found = accelerator_found(delegate)  # the device has it and runs without it: a WARNING, as select's
                log.log(
                    logging.WARNING if found else logging.INFO,
                    "model %s: %sdelegate %s not used (%s); trying %s",
                    name,
                    f"{found} found, but " if found else "",
                    delegate,
                    exc,
                    order[i + 1],
                )
        if model.name != name:
            model.card = replace(model.card, name=name)
        return model

    def _track(self, model: Model) -> None:
        """Note an isolated model just loaded, for ``_stop_workers``; once that ran (the OTA agent loads
        an update or a rollback's version while the daemon stops), stop its backend at once instead."""
        from edgerun.isolation import IsolatedBackend

        with self._workers_lock:
            if not self._workers_stopped:
                self._isolated.add(model)
                return
        if isinstance(model.backend, IsolatedBackend):
            model.backend.stop()

    def _store(self) -> ModelStore | None:
        """The OTA model store, or None when OTA is off."""
        if not self.config.ota.trusted_keys:
            return None
        from edgerun.ota.store import ModelStore

        return ModelStore(self._state_dir() / "models", self.config.ota.keep)

    def _check_before_start(self) -> None:
        """Create the state directory and read the secret files the API and the link will need: a
        ``ConfigError`` naming the config file, the path and the reason, before anything has started
        (a token file read only when the API starts would stop the daemon after its pipelines ran)."""
        from edgerun.state import check_state_dir, claim_state_dir

        try:
            check_state_dir(self._state_dir(), create=True)
            if self.config.api.enabled:
                self.config.api.resolved_token()
            if self.config.mqtt is not None:
                self.config.mqtt.resolved_password()
                self.config.mqtt.check_tls_files()
                if self.config.ota.trusted_keys:  # read before anything connects, as `run --ota-key` reads them
                    check_trusted_keys(self.config.ota.trusted_keys)  # the one that cannot be used named by its key
                if not self._claimed:  # before the OTA store is read; the link claims it again
                    claim_state_dir(self._state_dir())
                    self._claimed = True
        except ConfigError as exc:
            raise ConfigError(f"{self.config_path}: {exc}" if self.config_path else str(exc)) from None

    def _serve(self, name: str, mc: ModelConfig, running: Model | None = None) -> Model:
        """The model to serve for ``name``, at start and on SIGHUP alike: with OTA on, the store's
        active version (loaded with ``mc``'s settings) wins over ``mc.path``; without, ``mc.path``.

        ``running``: the model serving ``name`` now, where only its file changed on disk (``mc`` is
        the section it was loaded with). With OTA on it is returned as it is where the store's copy
        it runs is still what serves (``serve_from_store``): an update is not swapped for a fresh
        load of itself because the config's file changed."""
        store = self._store()
        if store is None:
            return self._load_configured(name, mc)
        from edgerun.ota.serving import serve_from_store

        return serve_from_store(
            Path(mc.path), store, lambda p, card: self._load_configured(name, mc, p, card), running, name=name
        )

    def _load_configured(self, name: str, mc: ModelConfig, path: Path | None = None, card: Any = None) -> Model:
        """``_load``, where a ``ModelLoadError`` of the config's own file (not there, unreadable, not a model,
        refused by its runtime) names its key, after the config file, as ``config check`` does
        (``my.yaml: models.digits.path: model file not found: /x/digits.onnx``). The OTA store's copy of a
        version is not the config's file: an error loading it is said as it is."""
        from edgerun.errors import ModelLoadError

        try:
            return self._load(name, mc, path, card)
        except ModelLoadError as exc:
            if path is not None and Path(path) != Path(mc.path):
                raise
            where = f"{self.config_path}: " if self.config_path else ""
            raise ModelLoadError(f"{where}models.{name}.path: {exc}") from exc

    @staticmethod
    def _on_disk(mc: ModelConfig) -> tuple[tuple[int, int, int] | None, ...]:
        """``mc``'s model file and its card (every place ``find_card`` looks: an Edge TPU-compiled model's CPU
        twin's card too) as they are on disk: size, mtime (ns) and inode of each, None where there is none. A
        model or card copied over the old one at the same path changes it, so a SIGHUP reloads that model as it
        does a changed section."""
        from edgerun.card import card_candidates

        path = Path(mc.path)
        seen: list[tuple[int, int, int] | None] = []
        for file in (path, *card_candidates(path)):
            try:
                st = os.stat(file)
            except OSError:
                seen.append(None)
            else:
                seen.append((st.st_size, st.st_mtime_ns, st.st_ino))
        return tuple(seen)

    def _still_active(self, name: str, model: Model) -> bool:
        """False when an OTA update activated another version of ``name`` while ``model`` loaded."""
        store = self._store()
        active = store.active(name) if store is not None else None
        return active is None or active.version == model.version

    def _make_sync(self) -> None:
        """The ``SyncService`` of the config's ``mqtt`` section, not started: ``_start_parts`` starts it
        once the OTA agent has subscribed."""
        c = self.config.mqtt
        if c is None:
            return
        from edgerun.accel.probe import probe
        from edgerun.sync.service import SyncService
        from edgerun.sync.settings import MqttSettings

        password = c.resolved_password()
        settings = MqttSettings.from_url(
            c.url,
            ca_file=c.ca_file,
            cert_file=c.cert_file,
            key_file=c.key_file,
            protocol=c.protocol,
            topic_prefix=c.topic_prefix,
            keepalive_s=c.keepalive_s,
            password=password,
        )
        self.sync = SyncService(
            settings,
            device_id=self.device_id,
            state_dir=self._state_dir(),
            metrics=self.metrics,
            interval_s=c.metrics_interval_s,
            outbox_max_bytes=int(c.outbox_max_mb * 1024 * 1024),
            results_qos=c.results_qos,
            results_max_per_s=c.results_max_per_s,
        )
        self.sync.set_models({n: s.describe() for n, s in self.slots.items()}, probe().accelerators())
        self.sync.set_groups(self.config.device.groups)

    def _start_ota(self) -> None:
        o = self.config.ota
        if not o.trusted_keys or self.sync is None:
            return
        from edgerun.ota.agent import OtaAgent, OtaSettings
        from edgerun.ota.store import ModelStore

        self.ota = OtaAgent(
            OtaSettings(
                trusted_keys=tuple(o.trusted_keys),
                max_bytes=int(o.max_mb * 1024 * 1024),
                keep=o.keep,
                clock_skew_s=o.clock_skew_s,
                download_timeout_s=o.download_timeout_s,
                probation_s=o.probation_s,
                max_error_rate=o.max_error_rate,
                max_p95_ratio=o.max_p95_ratio,
            ),
            link=self.sync.link,
            topics=self.sync.topics,
            groups=tuple(self.config.device.groups),
            store=ModelStore(self._state_dir() / "models", o.keep),
            slots=self.slots,
            metrics=self.metrics,
            state_dir=self._state_dir(),
            # the settings in force when the update arrives (a SIGHUP may have changed them)
            load_model=lambda path, card: self._load(card.name, self.config.models[card.name], path, card),
        )
        self.ota.start()

    def _start_pipeline(self, name: str, pc: PipelineConfig) -> None:
        results = None  # a sink per run, logging its skipped results under the pipeline's name
        if self.sync is not None and self.config.models[pc.model].publish_results:
            results = functools.partial(self.sync.results_sink, name)
        runner = _PipelineRunner(name, pc, self.slots[pc.model], self.metrics, results)
        self.runners[name] = runner
        runner.start()

    def status(self) -> dict[str, Any]:
        """What the status page and ``/v1/status`` show."""
        from edgerun.accel.probe import probe

        info: dict[str, Any] = {
            "device": self.device_id,  # the default one too: without it the status page had no header
            "accelerators": probe().accelerators(),
            "models": {n: s.describe() for n, s in self.slots.items()},
            "pipelines": {n: r.state for n, r in self.runners.items()},
            # per pipeline publishing results: those skipped over mqtt.results_max_per_s since it started
            "results_skipped": {n: r.results.skipped for n, r in self.runners.items() if r.results is not None},
            "metrics": self.metrics.snapshot(300.0),
            "mqtt": None,
            "ota_events": self.ota.events[-10:] if self.ota else [],
        }
        if self.sync is not None:
            state = self.sync.link.state()
            info["mqtt"] = {
                "connected": state.connected,
                "broker": state.broker,
                "last_error": state.last_error,
                "outbox": len(self.sync.outbox),
            }
        return info

    def _take_api_port(self) -> None:
        """Listen on ``api.bind``:``api.port`` before anything else starts (``_listen``): a port in use stops
        the start with nothing done, not after every pipeline ran once (under ``Restart=on-failure``, a
        folder's records written again every few seconds) and MQTT said ``online`` and took commands."""
        a = self.config.api
        if a.enabled and not self._api_sockets:
            self._api_sockets = _listen(a.bind, a.port)

    def _start_api(self) -> None:
        """Serve the API on the sockets ``_take_api_port`` listens on: requests are answered from here on,
        those that connected while the daemon started included."""
        a = self.config.api
        if not a.enabled:
            return
        import uvicorn

        from edgerun.api import create_app

        app = create_app(self.slots, self.metrics, a, ready=lambda: self.ready, status=self.status)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=a.bind,
                port=a.port,
                log_level="warning",
                log_config=None,  # its records go to the daemon's own handler (JSON lines where configured)
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=API_GRACE_S,
            )
        )
        sockets = self._api_sockets
        thread = self._api_thread = threading.Thread(
            target=server.run, kwargs={"sockets": sockets}, name="api", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not server.started:  # the port is ours already: not a bind; uvicorn said why, if it could
            raise EdgerunError(f"the HTTP API on {_url_host(a.bind)}:{a.port} did not start")
        self.api_port = sockets[0].getsockname()[1]
        self.server = server
        log.info("HTTP API on http://%s:%d", _url_host(a.bind), self.api_port)

    # -- life cycle ----------------------------------------------------------------
    def start(self) -> None:
        """Check the state directory and secret files, take the API's port, load every model, then start OTA, sync,
        pipelines and the API. A start that fails stops what it started (the API's port let go too) and raises."""
        self._check_before_start()
        try:
            self._start_parts()
        except BaseException:
            self.stop()
            raise

    def _start_parts(self) -> None:
        """Everything ``start`` does after the state directory and secret files are checked: the API's port
        first (``_take_api_port``), then the models, OTA, sync and the pipelines; the API is served last, and
        ``/ready`` answers 200 only once all of it is up."""
        self._take_api_port()
        for name, mc in self.config.models.items():
            files = self._on_disk(mc)  # before the load: a file replaced while it loads is seen at the next SIGHUP
            self.slots[name] = ModelSlot(self._serve(name, mc))
            self._files[name] = files
        self._make_sync()
        # OTA subscribes before the link connects: what the broker kept for the device's persistent
        # session while it was offline (commands included) comes right after CONNACK, and the link
        # drops a message no handler is registered for. An OTA that fails to start stops the daemon
        # (``stop``, the sync started or not) before the link connects: nothing kept is taken and lost.
        self._start_ota()
        if self.sync is not None:
            self.sync.start()
        for name, pc in self.config.pipelines.items():
            self._start_pipeline(name, pc)
        # ready before it is served: a request that waited in the backlog through the start is answered 200, not
        # 503 for the instant between the two; a failed API start stops the daemon, which sets it back
        self.ready = True
        self._start_api()
        systemd.notify("READY=1", f"STATUS=serving {', '.join(self.slots)}")
        log.info(
            "edgerun daemon ready: models %s, pipelines %s", ", ".join(self.slots), ", ".join(self.runners) or "none"
        )

    def reload(self) -> None:
        """Apply a changed config file (models and pipelines); keep the old one if the new is broken."""
        if self.config_path is None:
            log.warning("SIGHUP: running on the built-in default config, nothing to reload")
            return
        try:
            new = load_config(self.config_path)
        except EdgerunError as exc:
            log.error("SIGHUP: config not reloaded, the running one is kept: %s", exc)
            return
        except Exception:  # a bug, not a broken file: still no reason to stop serving
            log.exception("SIGHUP: config not reloaded (unexpected error), the running one is kept")
            return
        old = self.config
        for section in _RESTART_ONLY:
            if getattr(old, section) != getattr(new, section):
                log.warning("SIGHUP: the %s section changed; it applies at the next restart", section)
        if old.logging.format != new.logging.format:  # the level applies now; the handler stays as it was set up
            log.warning("SIGHUP: logging.format changed; it applies at the next restart (logging.level applies now)")
        # publish_results is the pipelines' business (restarted below), not a reason to load the model again
        changed = {
            n
            for n, mc in new.models.items()
            if n not in old.models or _but_publishing(old.models[n]) != _but_publishing(mc)
        }
        on_disk: set[str] = set()  # changed on disk only: the model serving now may be what is chosen again
        for n in sorted((set(new.models) & set(old.models)) - changed):
            if self._files.get(n) is not None and self._on_disk(new.models[n]) != self._files[n]:
                log.info("SIGHUP: model %s: %s or its card changed on disk; reloading it", n, new.models[n].path)
                changed.add(n)
                on_disk.add(n)
        publishing = {
            n
            for n, mc in new.models.items()
            if self.sync is not None and n in old.models and old.models[n].publish_results != mc.publish_results
        }
        loaded: dict[str, Model] = {}
        serving_on: dict[str, Model] = {}  # chosen again as they serve: the store's copy of an update
        files: dict[str, tuple[tuple[int, int, int] | None, ...]] = {}
        try:
            for n in changed:  # chosen as at start (the store's active version wins), loaded and warmed before any swap
                files[n] = self._on_disk(new.models[n])
                slot = self.slots.get(n) if n in on_disk else None
                running = slot.primary if slot is not None else None
                model = self._serve(n, new.models[n], running)
                if model is running:
                    serving_on[n] = model
                else:
                    loaded[n] = model
        except Exception as exc:
            for model in loaded.values():  # never served: an isolated one would keep its worker
                model.close()
            if isinstance(exc, EdgerunError):
                log.error("SIGHUP: a changed model does not load, the running config is kept: %s", exc)
            else:
                log.exception("SIGHUP: a changed model does not load (unexpected error), the running config is kept")
            return
        kept: dict[str, Any] = {s: getattr(old, s) for s in _RESTART_ONLY}
        kept["logging"] = new.logging.model_copy(update={"format": old.logging.format})  # the format in force
        self.config = new.model_copy(update=kept)
        for name, model in serving_on.items():  # the file's change does not bear on what serves: no swap
            self._files[name] = files[name]
            changed.discard(name)
            log.info(
                "SIGHUP: model %s: the model store's active %s serves on, not %s",
                name,
                model.version,
                new.models[name].path,
            )
        for name, model in loaded.items():
            with self.ota.holding_slots() if self.ota is not None else contextlib.nullcontext():
                if not self._still_active(name, model):
                    log.warning(
                        "SIGHUP: model %s not reloaded: an OTA update activated another version meanwhile", name
                    )
                    model.close()  # never served: an isolated one would keep its worker
                    continue
                added = name not in self.slots
                if added:
                    self.slots[name] = ModelSlot(model)
                else:
                    self.slots[name].swap(model)  # the old version is retired: stopped after its last request
                self._files[name] = files[name]
            said = "added" if added else "reloaded"
            log.info("SIGHUP: model %s %s (%s %s on %s)", name, said, model.name, model.version, model.delegate)
        for name in set(old.pipelines) | set(new.pipelines):
            if old.pipelines.get(name) != new.pipelines.get(name) or (
                name in new.pipelines and new.pipelines[name].model in changed and name not in self.runners
            ):
                runner = self.runners.pop(name, None)
                if runner is not None:
                    runner.stop()
                if name in new.pipelines:
                    self._start_pipeline(name, new.pipelines[name])
                said = "removed" if name not in new.pipelines else "restarted" if name in old.pipelines else "added"
                log.info("SIGHUP: pipeline %s %s", name, said)
            elif new.pipelines[name].model in publishing and name in self.runners:
                self._republish(name, new.pipelines[name])
        for name in set(self.slots) - set(new.models):
            if not any(p.model == name for p in new.pipelines.values()):
                # its requests in progress finish; then an isolated model's worker stops (ModelSlot.retire)
                self.slots.pop(name).retire()
                self._files.pop(name, None)
                log.info("SIGHUP: model %s removed", name)
        if self.sync is not None:
            self.sync.set_models({n: s.describe() for n, s in self.slots.items()})
        logging.getLogger().setLevel(new.logging.level)
        log.info("SIGHUP: config reloaded from %s", self.config_path)

    def _republish(self, name: str, pc: PipelineConfig) -> None:
        """Restart pipeline ``name`` (unchanged itself) because its model's ``publish_results`` changed: the
        results sink is chosen when a pipeline starts. As for a changed pipeline, its in-flight frames are
        finished and it starts afresh; one whose source ended is left finished (started again, it would
        write every input to its sinks a second time, only to change what is published)."""
        setting = "on" if self.config.models[pc.model].publish_results else "off"
        runner = self.runners[name]
        if runner.state == "finished":
            log.info(
                "SIGHUP: pipeline %s not restarted for publish_results of model %s (now %s): its source ended",
                name,
                pc.model,
                setting,
            )
            return
        self.runners.pop(name).stop()
        self._start_pipeline(name, pc)
        log.info("SIGHUP: pipeline %s restarted: publish_results of model %s is now %s", name, pc.model, setting)

    def stop(self) -> None:
        """Stop everything, in the order that loses nothing; a part that fails to stop is logged and the
        parts after it still stop (the outbox is flushed and ``offline`` published whatever came before)."""
        systemd.notify("STOPPING=1")
        self.ready = False
        if self.server is not None:
            self.server.should_exit = True  # no new connections; the requests in progress are answered
        self._guarded("isolated models", self._stop_workers)
        runners = list(self.runners.values())
        for runner in runners:  # all at once: a source slow to close (a stream mid-connect) delays none of the others
            self._guarded(f"pipeline {runner.name}", runner.request_stop)
        deadline = time.monotonic() + RUNNER_STOP_S
        for runner in runners:
            runner.join(deadline)
        self._wait_api()
        if self.server is None:  # a start that failed before the API was served: its port is given back
            for sock in self._api_sockets:
                sock.close()
            self._api_sockets = []
        if self.ota is not None:
            self._guarded("OTA", self.ota.stop)
        if self.sync is not None:
            self._guarded("MQTT sync", self.sync.stop)
        if self._claimed:
            from edgerun.state import release_state_dir

            self._claimed = False
            release_state_dir(self._state_dir())
        log.info("edgerun daemon stopped")

    def _stop_workers(self) -> None:
        """Each isolated model a request may run on starts no worker any more, and a call on a worker
        that does not answer fails after ``CLOSE_GRACE_S`` (``IsolatedBackend.stop``): a request or frame
        waiting on a worker that hangs or restarts ends in seconds, not after the call's and the API's
        30 s, while the calls live workers answer are answered.

        Those models are the ones in ``_isolated``: every isolated model is loaded by ``_load``, which
        notes it there (``_track``), and a request refers to the model it runs on (an API request, a
        pipeline's frame) until it is done, so the set still holds those served (an A/B candidate too),
        those swapped out or removed that still finish requests, and an update loaded and not yet swapped in.

        The OTA agent runs on until after the pipelines and the API: an update (or a rollback) it loads
        meanwhile is swapped in after this ran. Those loaded before it are stopped here, and those loaded
        after it as soon as they are (``_track``): a request that takes such a model is ended like one on
        the model it replaced. Stopping the agent first would not do: its stop waits 10 s at most for a
        load or a validation in progress, which may still swap after that, and would hold back this stop
        by as long."""
        from edgerun.isolation import IsolatedBackend

        with self._workers_lock:
            self._workers_stopped = True
            loaded = list(self._isolated)
        for model in loaded:
            if isinstance(model.backend, IsolatedBackend):
                model.backend.stop()

    @staticmethod
    def _guarded(part: str, stop: Callable[[], None]) -> None:
        try:
            stop()
        except Exception:
            log.exception("stopping %s failed; stopping the rest", part)

    def _wait_api(self) -> None:
        """Wait for the API thread: it ends once every request in progress is answered (``API_GRACE_S``
        at most, then uvicorn cancels them). Returning earlier let the interpreter tear down while a
        pool thread was still decoding an image or running the model, which aborts the process."""
        thread = self._api_thread
        if thread is None:
            return
        thread.join(API_GRACE_S + 5)
        if thread.is_alive():
            log.warning("HTTP API: requests still running %.0f s after the stop; exiting without them", API_GRACE_S)

    def run(self) -> int:
        """Start, then serve until SIGTERM/SIGINT (SIGHUP reloads); returns the exit code."""

        def stop(sig: signal.Signals) -> None:
            self._stop.set()

        def reload(sig: signal.Signals) -> None:
            self._reload.set()

        with signals.handled({signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: reload}):
            return self._serve_until_stopped()

    def _serve_until_stopped(self) -> int:
        self.start()  # a start that fails has stopped what it started
        watchdog = systemd.watchdog_interval_s()
        try:
            while not self._stop.is_set():
                self._stop.wait(min(watchdog or 1.0, 1.0))
                if self._reload.is_set():
                    self._reload.clear()
                    self._reload_watched(watchdog)
                if watchdog is not None:
                    systemd.notify("WATCHDOG=1")
        finally:
            self.stop()
        return 0

    def _reload_watched(self, watchdog: float | None) -> None:
        """``reload()`` on the main thread, systemd told and its watchdog fed meanwhile.

        Stopping pipelines (up to 30 s each) and loading and warming models can outlast
        ``WatchdogSec``; a small thread sends ``WATCHDOG=1`` every ``watchdog`` seconds until the
        reload returns, for ``RELOAD_WATCHDOG_S`` at most, so a reload that hangs still lets
        systemd restart the daemon. A reload that fails with a bug is logged; the daemon goes on.
        """
        systemd.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        done = threading.Event()
        feeder = None
        if watchdog is not None:
            interval = watchdog

            def feed() -> None:
                deadline = time.monotonic() + RELOAD_WATCHDOG_S
                while not done.wait(interval) and time.monotonic() < deadline:
                    systemd.notify("WATCHDOG=1")

            feeder = threading.Thread(target=feed, name="watchdog", daemon=True)
            feeder.start()
        try:
            self.reload()
        except Exception:
            log.exception("SIGHUP: the reload failed part way; the daemon keeps serving")
        finally:
            done.set()
            if feeder is not None:
                feeder.join()
            systemd.notify("READY=1", f"STATUS=serving {', '.join(self.slots)}")
