"""The daemon's configuration: YAML validated by pydantic models (unknown keys are errors).

Every error names the file, the field and what is wrong, in one line (up to
three errors, then a count), e.g. ``device-configs/rpi5.yaml:
models.digits.threads: Input should be less than or equal to 256`` or
``c.yaml: models: Field required; model: unknown key``.

Every string that names a file is refused when it holds a NUL byte, which no file name can
hold (it would only fail later, with a traceback, where the file is opened). Loading walks no
directory: a pipeline whose source is a glob is checked against its sinks by the pattern alone.
The files the config names (models, TLS, secrets, trusted keys, ``state_dir``) are refused when
empty, have ``~`` expanded and, where relative, are taken from the config file's folder, never
from the working directory. So are a pipeline's source and sinks where they name files (a glob as
a pattern, a ``DIR/`` sink with its slash), before they are checked against each other; a camera,
a stream, MQTT or another URL, standard input (``-``, ``stdin``) and the standard output sinks
(``stdout``, ``jsonl``, ``json``) are kept as written. A file or ``DIR/`` sink is one pipeline's:
another pipeline's sink or source onto it is refused, naming both pipelines, every such clash in the one
error; where a folder is not there yet (a glob's fixed folder, a source the daemon waits for) the names are
compared as written, normalised, so that it hides no clash. A value of the wrong type
is refused, not converted (``_Strict``).

A config that validates can still fail to run; ``check_runnable`` names what
``edgerun config check`` finds missing on disk (model files), in the same form.
The MQTT URL is checked by the same ``MqttSettings.from_url`` the ``--mqtt``
option goes through, so the file and the command line accept the same URLs.
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edgerun.errors import ConfigError, shown
from edgerun.files import read_utf8
from edgerun.globbing import glob_lists
from edgerun.limits import BATCH_SIZE_MAX, FPS_MAX, FPS_MIN, PREPARE_WORKERS_MAX, THREADS_MAX
from edgerun.sync.topics import METRICS_INTERVAL_MAX_S, METRICS_INTERVAL_MIN_S, PREFIX_MAX

__all__ = ["ApiConfig", "Config", "check_runnable", "check_trusted_keys", "default_config", "load_config"]

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


def _no_nul(text: str) -> str:
    """A file name, source or sink string without a NUL byte: no file name can hold one, and
    the OS calls that would open it raise ``ValueError`` far from the config that named it."""
    if "\0" in text:
        raise ValueError("holds a NUL byte (\\0), which no file name can hold")
    return text


def _not_empty(text: str) -> str:
    """A file name that names something: ``""`` would be taken as the config's own folder (or,
    for ``state_dir``, quietly as the default one)."""
    if not text:
        raise ValueError("an empty string names no file")
    return text


#: A string naming a source or sink, which may be a file.
Spec = Annotated[str, AfterValidator(_no_nul)]
#: A string naming a file: not empty; a relative one is taken from the config file's folder, and
#: ``~`` is expanded (``_resolve``).
FileName = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_empty)]

#: A bearer token a client can send: visible ASCII, no spaces. HTTP servers strip the spaces
#: around a header value and cannot carry control characters, and non-ASCII bytes reach the
#: server in whatever encoding the client chose: such a token could never be matched.
TOKEN_PATTERN = r"^[\x21-\x7e]+$"
TOKEN_MIN = 16
#: the most a config may hold: hundreds of times a real one, and a bound on what a file given by
#: mistake costs before it is refused (the pure-Python YAML reader the config uses takes ~1 s a MiB)
CONFIG_MAX_BYTES = 1 << 20


def _check_token(token: str, where: str) -> str:
    """``token`` if it can be sent and is not trivially short, else a ConfigError naming ``where``."""
    if len(token) < TOKEN_MIN:
        raise ConfigError(f"{where}: the token has {len(token)} characters; at least {TOKEN_MIN} are needed")
    if re.fullmatch(TOKEN_PATTERN, token) is None:
        raise ConfigError(f"{where}: the token has spaces, control or non-ASCII characters, which no client can send")
    return token


class _Strict(BaseModel):
    """Unknown keys are errors, and so is a value of the wrong type (pydantic's strict mode): no
    ``port: true`` taken as port 1, no ``enabled: 'off'`` taken as false. An integer is still a
    number where a float is meant (``fps: 10``), and YAML's own booleans (``true``, ``yes``) are booleans."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class DeviceConfig(_Strict):
    """Who this device is."""

    id: Name | None = Field(None, description="device id; default: derived from /etc/machine-id")
    groups: list[Name] = Field(default_factory=list, description="groups for group manifests and commands")


class ModelConfig(_Strict):
    """One model the device serves."""

    path: FileName = Field(description="model file (.onnx/.tflite); with OTA on, the store's active version wins")
    delegate: str | list[str] = Field(
        "auto",
        description="auto, fastest, a delegate name, or a non-empty preference order such as [edgetpu, xnnpack, cpu]",
    )
    threads: int | None = Field(
        None, ge=1, le=THREADS_MAX, description="CPU threads; default 1 for tiny models, else up to 4"
    )
    strict_accelerator: bool = Field(False, description="fail instead of falling back from a present accelerator")
    publish_results: bool = Field(False, description="publish every result on P/ID/results/<model>")

    @field_validator("delegate")
    @classmethod
    def _an_order_names_a_delegate(cls, delegate: str | list[str]) -> str | list[str]:
        """An empty order would leave the daemon nothing to load the model with; a misspelt
        name is refused here, as the daemon would refuse it at start, not found by ``config check``."""
        from edgerun.accel.delegates import check_delegate

        if isinstance(delegate, list) and not delegate:
            raise ValueError("an empty preference order: name at least one delegate, or use auto")
        for name in [delegate] if isinstance(delegate, str) else delegate:
            try:
                check_delegate(name)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return delegate


class PipelineConfig(_Strict):
    """A source feeding one model into sinks."""

    source: Spec = Field(description="a source string as for `edgerun run --source`")
    model: Name = Field(description="a key of `models`")
    sinks: list[Spec] = Field(default_factory=list, description="sink strings as for `edgerun run --sink`")
    fps: float | None = Field(None, ge=FPS_MIN, le=FPS_MAX, description="target frames per second")
    window: int | None = Field(None, ge=1, le=sys.maxsize, description="sensor sources: rows per inference")
    hop: int | None = Field(None, ge=1, description="sensor sources: rows between windows")
    width: int | None = Field(None, ge=16, le=8192, description="camera width")
    height: int | None = Field(None, ge=16, le=8192, description="camera height")
    camera_fps: float | None = Field(None, ge=FPS_MIN, le=FPS_MAX, description="camera capture rate")
    queue: int | None = Field(None, ge=1, le=1024, description="live sources: frames kept")
    decode_threads: int = Field(
        1, ge=0, le=64, description="video files and streams: decoding threads (0: the decoder's choice)"
    )
    batch_size: int = Field(1, ge=1, le=BATCH_SIZE_MAX, description="frames per inference call")
    prepare_workers: int = Field(
        1, ge=1, le=PREPARE_WORKERS_MAX, description="image files and MQTT messages: threads decoding them in parallel"
    )
    restart_s: float = Field(5.0, ge=0.1, le=3600, description="wait before reopening a source that failed")

    @field_validator("source")
    @classmethod
    def _source_as_the_command_line_takes_it(cls, source: str) -> str:
        if not source:
            raise ValueError("an empty source names nothing")
        if source.startswith(("mqtt://", "mqtts://")):  # refused here, not retried for ever by the daemon
            from edgerun.sources.mqtt import parse_mqtt_url, split_credentials

            try:
                parse_mqtt_url(split_credentials(source)[0])
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return source

    @field_validator("sinks")
    @classmethod
    def _sinks_as_the_command_line_takes_them(cls, sinks: list[str]) -> list[str]:
        from edgerun.sinks import sink_kind

        for spec in sinks:
            try:
                sink_kind(spec)  # names the sink, opens nothing
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return sinks

    @model_validator(mode="after")
    def _annotated_sinks_need_images(self) -> PipelineConfig:
        from edgerun.sinks import first_drawing_sink
        from edgerun.sources.sensor import is_sensor_spec

        drawn = first_drawing_sink(self.sinks)
        if drawn is not None and is_sensor_spec(self.source):
            raise ValueError(f"sink {drawn!r} draws on images, and the sensor source {self.source!r} gives none")
        return self

    @model_validator(mode="after")
    def _windows_for_sensor_sources_only(self) -> PipelineConfig:
        from edgerun.sources.sensor import check_windows_wanted

        given = [key for key in ("window", "hop") if getattr(self, key) is not None]
        try:  # else ignored without a word
            check_windows_wanted(given, [self.source], f"the source {self.source!r}")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _no_sink_onto_the_source(self, info: ValidationInfo) -> PipelineConfig:
        """As ``edgerun run`` refuses ``--sink`` onto its ``--source``: results appended would damage the input.

        The files are compared where the daemon opens them (``taken_from`` the config's folder, given by
        ``parse_config`` as ``info.context["base"]``), and a sink is named as the config writes it.
        A glob source is not expanded here: each sink is matched against the pattern instead, so
        loading walks no directory (``/**/*.jpg``, or a tree with a symlink loop, would take for ever).
        """
        from edgerun.sinks import images_into_source, repeated_sink, sink_onto_input

        base = (info.context or {}).get("base")
        opened = self.taken_from(base)
        source, sinks, pattern = self.read_from(base), opened.sinks, glob.has_magic(self.source)
        for i, sink in enumerate(sinks):  # one pair at a time: the sinks named as written
            earlier = next((j for j in range(i) if repeated_sink([sinks[j], sink])), None)
            if earlier is not None:
                raise ValueError(
                    f"sink {self.sinks[i]!r} names the file of sink {self.sinks[earlier]!r} again: "
                    "each record would be written twice"
                )
        # a glob source: the sinks it lists, by the names the daemon's glob gives them
        inputs = [s for s in sinks if glob_lists(s, source)] if pattern else [source]
        for written, sink in zip(self.sinks, sinks, strict=True):
            if clash := sink_onto_input([sink], inputs):
                raise ValueError(f"sink {written!r} is the source file {clash[1]}: writing it would damage the input")
        for written, sink in zip(self.sinks, sinks, strict=True):
            if into := images_into_source([sink], [source]):
                raise ValueError(f"sink {written!r} is {into[1]}")
        return self

    def read_from(self, base: Path | None) -> str:
        """What the source reads as the daemon opens it (``taken_from``), but a file or folder unescaped: a
        glob's pattern (with ``base`` escaped), else the one file or folder, as the system names it."""
        from edgerun.sources import names_files

        if base is not None and not glob.has_magic(self.source) and names_files(self.source):
            return _in_folder(self.source, base, "source", source=False)
        return self.taken_from(base).source

    def taken_from(self, base: Path | None) -> PipelineConfig:
        """This pipeline with its source and sinks as the daemon opens them: each that names files taken
        from ``base``, the config file's folder (``_in_folder``); as written where ``base`` is None.

        A source names files unless it is a camera, a stream, an MQTT topic or standard input (as
        ``open_source`` tells them apart); a sink does unless it is one on standard output (``sink_kind``).

        Raises:
            ValueError: a ``~`` or ``~user`` naming no home directory, with the key.
        """
        from edgerun.sinks import sink_kind
        from edgerun.sources import names_files

        if base is None:
            return self
        source = _in_folder(self.source, base, "source", source=True) if names_files(self.source) else self.source
        sinks = [
            _in_folder(spec, base, f"sinks.{i}", source=False) if sink_kind(spec) in _FILE_SINKS else spec
            for i, spec in enumerate(self.sinks)
        ]
        return self.model_copy(update={"source": source, "sinks": sinks})


#: The sinks that name a file or a folder (``sink_kind``): all but those on standard output.
_FILE_SINKS = ("jsonl-file", "csv", "video", "images")


def _in_folder(spec: str, base: Path, key: str, *, source: bool) -> str:
    """A pipeline's source or sink ``spec`` with ``~`` expanded (``_home``) and, where relative, taken
    from ``base``; ``ValueError`` naming ``key`` where ``~`` names no home directory. A trailing ``/``
    is kept (a ``DIR/`` sink is named by it).

    A sink is a file name, never a pattern. A source is globbed by the file source wherever it holds
    a wildcard, so the folder it is joined to (``base`` or a home directory, which may hold ``[``)
    is escaped: a glob keeps only its own wildcards, and a plain name globs to exactly its file.
    """
    try:
        expanded = _home(spec)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    root, tail = str(base), spec
    if spec.startswith("~"):  # the home directory (``expanduser`` replaced the first part only)
        rest = spec.partition("/")[1] + spec.partition("/")[2]
        root, tail = expanded[: len(expanded) - len(rest)], rest.lstrip("/")
    if not source:
        joined = str(Path(root) / tail)
    elif glob.has_magic(spec):
        joined = str(Path(glob.escape(root)) / tail)
    else:
        joined = glob.escape(str(Path(root) / tail))
    return joined + "/" if spec.endswith("/") and not joined.endswith("/") else joined


def _shared(group: list[tuple[str, str, str]]) -> str:
    """The clause naming the pipelines of ``group`` (pipeline, sink as written, as opened), which all write one
    file or ``DIR/``: the sink as the first writes it, and how each other one spells it where it differs."""
    (first, spec, _), others = group[0], group[1:]
    who = ", ".join([first, *(name for name, _, _ in others[:-1])]) + f" and {others[-1][0]}"
    spelt = ", ".join(f"{name} as {other}" for name, other, _ in others if other != spec)
    return (
        f"{who} {'both' if len(group) == 2 else 'all'} write {spec} "
        f"({spelt + '; ' if spelt else ''}a sink is one pipeline's: give each its own)"
    )


def _reads_sink(reader: str, pipeline: PipelineConfig, base: Path | None, spec: str, sink: str) -> str | None:
    """How the pipeline ``reader``'s source reads the file or ``DIR/`` another pipeline writes (``spec`` as
    the config names it, ``sink`` as it is opened: ``taken_from``), in words; None when it does not.

    A file source reads a file sink that is its file; a folder source (walked at any depth, for images and
    arrays only) the images of a ``DIR/`` in it; a glob what its pattern lists, a ``DIR/``'s images by the
    numbered names they are given (``000000.jpg``). Only the sink's own path is looked at, never a folder's
    entries (as ``glob_lists``): a config is checked without walking ``/data/**``. A source not there yet
    is taken as a folder for a ``DIR/`` inside it, since making that ``DIR/`` makes the source a folder; and
    a glob whose fixed folder is not there yet as the names say (``glob_lists``'s ``once_made``): the daemon
    waits for both.
    """
    from edgerun.sinks import inside, repeated_sink, sink_kind
    from edgerun.sources import names_files

    if not names_files(pipeline.source):
        return None
    source, images = pipeline.read_from(base), sink_kind(spec) == "images"
    if glob.has_magic(pipeline.source):
        listed = os.path.join(sink, "000000.jpg") if images else sink
        lists = glob_lists(listed, source, once_made=True)
        return f"which the source of {reader}, {pipeline.source}, lists" if lists else None
    if os.path.isdir(source) or source.endswith("/") or (images and not os.path.lexists(source)):
        if not images:  # a folder is walked for images and arrays: no file sink is one
            return None
        return f"inside the source folder of {reader}, {pipeline.source}" if inside(sink, source) else None
    if repeated_sink([sink, source]) is None:  # neither one file nor two names of it
        return None
    return f"which {reader} reads" + ("" if pipeline.source == spec else f" as {pipeline.source}")


#: The smallest outbox bound, in MiB: 4096 bytes, below which ``Outbox`` refuses to open.
OUTBOX_MIN_MB = 4096 / (1024 * 1024)


class MqttConfig(_Strict):
    """The broker link (docs/sync.md)."""

    url: str = Field(description="mqtt[s]://[user@]host[:port]")
    ca_file: FileName | None = None
    cert_file: FileName | None = None
    key_file: FileName | None = None
    password_file: FileName | None = Field(None, description="file holding the MQTT password")
    protocol: Literal["5", "3.1.1"] = "5"
    topic_prefix: str = Field(
        "edgerun", description=f"P of PROTOCOL.md: 1-{PREFIX_MAX} characters, checked by check_prefix"
    )
    keepalive_s: int = Field(30, ge=5, le=3600)
    metrics_interval_s: float = Field(10.0, ge=METRICS_INTERVAL_MIN_S, le=METRICS_INTERVAL_MAX_S)
    #: at least 4096 bytes, the outbox's own floor (a config check passed a bound the daemon then refused)
    outbox_max_mb: float = Field(64.0, ge=OUTBOX_MIN_MB, le=100_000)
    results_qos: Literal[0, 1] = 1
    results_max_per_s: float | None = Field(None, gt=0)

    def check_tls_files(self) -> None:
        """``MqttSettings.check_tls_files`` with this section's keys as the names (``ConfigError``)."""
        from edgerun.sync.settings import MqttSettings

        settings = MqttSettings.from_url(
            self.url, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )
        if settings.tls:
            settings.check_tls_files(("mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file"))

    def resolved_password(self) -> str | None:
        """The password from ``password_file`` (surrounding whitespace dropped), or None without one.

        Raises:
            ConfigError: the file cannot be read, or is not UTF-8 text.
        """
        return _secret_file(self.password_file, "mqtt.password_file") if self.password_file else None

    @field_validator("results_qos", mode="before")
    @classmethod
    def _qos_not_a_boolean(cls, qos: Any) -> Any:
        """``Literal[0, 1]`` takes ``true`` for 1 even in strict mode (``True == 1`` in Python)."""
        if isinstance(qos, bool):
            raise ValueError("Input should be 0 or 1, not a boolean")
        return qos

    @field_validator("url")
    @classmethod
    def _url_as_the_command_line_takes_it(cls, url: str) -> str:
        from edgerun.sync.settings import MqttSettings

        try:
            MqttSettings.from_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return url

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_as_the_link_takes_it(cls, prefix: str) -> str:
        from edgerun.sync.topics import check_prefix

        try:
            return check_prefix(prefix)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


class OtaConfig(_Strict):
    """Over-the-air updates (docs/ota.md)."""

    trusted_keys: list[FileName] = Field(default_factory=list, description="PEM Ed25519 public keys; empty: OTA off")
    max_mb: float = Field(256.0, gt=0, le=100_000)
    keep: int = Field(2, ge=1, le=20)
    clock_skew_s: float = Field(300.0, ge=0, le=86400)
    download_timeout_s: float = Field(120.0, ge=5, le=86400)
    probation_s: float = Field(300.0, ge=0, le=7 * 86400)
    max_error_rate: float = Field(0.05, ge=0, le=1)
    max_p95_ratio: float = Field(1.5, ge=1)


class ApiConfig(_Strict):
    """The local HTTP API."""

    enabled: bool = True
    bind: str = Field("127.0.0.1", description="address to listen on; anything but loopback needs a token")
    port: int = Field(8470, ge=0, le=65535, description="0 picks a free port (logged)")
    token: str | None = Field(
        None,
        min_length=TOKEN_MIN,
        pattern=TOKEN_PATTERN,
        description="bearer token (or token_file): visible ASCII, no spaces",
    )
    token_file: FileName | None = None
    max_request_mb: float = Field(8.0, gt=0, le=1024)
    max_concurrency: int = Field(32, ge=1, le=4096, description="requests in progress; more get 429")
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="a predict body pausing longer than this gets 408 (all of it: twice this, plus 1 s per 8 KiB)",
    )
    batch_max_size: int = Field(8, ge=1, le=256, description="requests grouped into one call (dynamic batch models)")
    batch_max_wait_ms: float = Field(2.0, ge=0, le=1000)

    def resolved_token(self) -> str | None:
        """The token, from the config or its file (surrounding whitespace dropped).

        Raises:
            ConfigError: the file cannot be read, or its token is empty, short or cannot be
                sent: an empty file must not leave an exposed API without a token.
        """
        if self.token_file:
            text = _secret_file(self.token_file, "api.token_file")
            return _check_token(text, f"api.token_file {self.token_file}")
        return self.token

    @model_validator(mode="after")
    def _token_when_exposed(self) -> ApiConfig:
        if self.token and self.token_file:
            raise ValueError("give api.token or api.token_file, not both")
        try:
            loopback = ipaddress.ip_address(self.bind).is_loopback
        except ValueError:
            loopback = self.bind == "localhost"
        if self.enabled and not loopback and not (self.token or self.token_file):
            raise ValueError(f"api.bind {self.bind} is not loopback: a token (api.token or api.token_file) is needed")
        return self


def _secret_file(path: str, key: str) -> str:
    """The text of a token or password file, surrounding whitespace dropped; ``ConfigError`` naming ``key``."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {key} {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{key} {path}: not UTF-8 text") from None


class LoggingConfig(_Strict):
    """Log level and format."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "text", "json"] = Field(
        "auto", description="auto: text on a terminal, JSON lines otherwise"
    )


class IsolationConfig(_Strict):
    """Where models run: in the daemon's process, or each in a supervised worker (``edgerun.isolation``)."""

    mode: Literal["thread", "process"] = Field(
        "thread", description="process: inference in a supervised worker process that survives native crashes"
    )
    start_timeout_s: float = Field(
        120.0,
        ge=1,
        le=3600,
        description="a worker not started (spawned, model loaded, warmed up) in this time fails to load; "
        "raise it for a first TensorRT engine build or a large model on a slow SD card",
    )


class Config(_Strict):
    """Everything ``edgerun daemon`` runs."""

    device: DeviceConfig = Field(default_factory=DeviceConfig)
    models: dict[Name, ModelConfig] = Field(min_length=1)
    pipelines: dict[Name, PipelineConfig] = Field(default_factory=dict)
    mqtt: MqttConfig | None = None
    ota: OtaConfig = Field(default_factory=OtaConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    state_dir: FileName | None = Field(
        None, description="default: $EDGERUN_STATE_DIR, else $XDG_STATE_HOME/edgerun, else ~/.local/state/edgerun"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    isolation: IsolationConfig = Field(
        default_factory=IsolationConfig, description="thread or process (short for mode:), or mode and start_timeout_s"
    )

    @field_validator("isolation", mode="before")
    @classmethod
    def _isolation_as_one_word(cls, isolation: Any) -> Any:
        """``isolation: process``, as configs have always written it, is the section's ``mode``."""
        if isinstance(isolation, str):
            return {"mode": isolation}
        if not isinstance(isolation, (dict, IsolationConfig)):
            raise ValueError("Input should be 'thread' or 'process', or a mapping of mode and start_timeout_s")
        return isolation

    @model_validator(mode="after")
    def _references(self) -> Config:
        for name, pipeline in self.pipelines.items():
            if pipeline.model not in self.models:
                raise ValueError(f"pipelines.{name}.model: no model named {pipeline.model!r} in models")
        if self.ota.trusted_keys and self.mqtt is None:
            raise ValueError("ota.trusted_keys needs mqtt: updates arrive over MQTT")
        if self.mqtt is not None and any(p.source.startswith("mqtt://") for p in self.pipelines.values()):
            self._no_source_hears_own_records(self.mqtt)
        return self

    @model_validator(mode="after")
    def _no_file_shared_by_two_pipelines(self, info: ValidationInfo) -> Config:
        """A file or folder one pipeline writes is no other pipeline's. Two writers of one JSON Lines or CSV
        file interleave their records, two of one ``DIR/`` number their images from the same point over
        each other's, two of one video replace or corrupt it; a pipeline whose source reads another's sink
        reads what is still being written. Files are compared where the daemon opens them, as a pipeline's
        own sinks are (``PipelineConfig._no_sink_onto_the_source``); standard output is no file (any number
        of pipelines print on it), nor is an MQTT topic or a URL.
        """
        from edgerun.sinks import repeated_sink, sink_kind

        base = (info.context or {}).get("base")
        names = list(self.pipelines)
        written = {  # per pipeline: (as written, as opened) of each sink that is a file or folder
            name: [
                (spec, path)
                for spec, path in zip(p.sinks, p.taken_from(base).sinks, strict=True)
                if sink_kind(spec) in _FILE_SINKS
            ]
            for name, p in self.pipelines.items()
        }
        groups: list[list[tuple[str, str, str]]] = []  # (pipeline, as written, as opened) per file written
        for name in names:
            for spec, path in written[name]:
                group = next((g for g in groups if repeated_sink([g[0][2], path]) is not None), None)
                if group is None:
                    groups.append([(name, spec, path)])
                else:
                    group.append((name, spec, path))
        clashes = [_shared(group) for group in groups if len(group) > 1]
        for a in names:
            for b in (b for b in names if b != a):
                for spec, path in written[a]:
                    if read := _reads_sink(b, self.pipelines[b], base, spec, path):
                        clashes.append(
                            f"{a} writes {spec}, {read} (a sink is no other pipeline's source: "
                            f"{b} would read what {a} is still writing)"
                        )
        if clashes:  # every one named: a config fixed one clash at a time would take as many checks
            raise ValueError("pipelines: " + "; ".join(clashes))
        return self

    def _no_source_hears_own_records(self, mqtt: MqttConfig) -> None:
        """As ``edgerun run`` refuses it: an MQTT source on the device's own broker whose filter matches
        the device's own records would take each for an input (``check_not_own_records``)."""
        from edgerun.device import machine_device_id
        from edgerun.sources.mqtt import check_not_own_records
        from edgerun.sync.settings import MqttSettings
        from edgerun.sync.topics import Topics

        broker = MqttSettings.from_url(mqtt.url)  # checked already by the url's own validator
        topics = Topics(mqtt.topic_prefix, self.device.id or machine_device_id())
        for name, pipeline in self.pipelines.items():
            try:
                check_not_own_records(pipeline.source, (broker.host, broker.port), topics)
            except ConfigError as exc:
                raise ValueError(f"pipelines.{name}.source: {exc}") from None

    def effective(self) -> dict[str, Any]:
        """The config with every default filled in, as plain data."""
        return self.model_dump(mode="json")


def _one_line(problems: list[str], shown: int = 3) -> str:
    """The first ``shown`` problems joined on one line, then how many more there are."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f" (and {more} more error{'s' if more > 1 else ''})" if more > 0 else "")


def _errors_line(exc: ValidationError) -> str:
    """Pydantic's errors on one line: a typo'd key shows as its unknown key and the key it missed."""
    problems = []
    for err in exc.errors():
        where = ".".join(shown(str(p)) for p in err["loc"])  # a key may hold a line break
        message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
        message += _number_hint(err)
        # the whole config's rules (a pipeline's model among the models) name their keys themselves
        problems.append(f"{where}: {shown(message)}" if where else shown(message))
    return _one_line(problems)


def _number_hint(err: Any) -> str:
    """How to write a number YAML took for text (``1e3``), which a number field refuses (strict mode)."""
    if err["type"] not in ("float_type", "int_type"):
        return ""
    from edgerun.card import yaml_number_hint

    return yaml_number_hint(err.get("input"), "int" if err["type"] == "int_type" else "float")


def parse_config(data: Any, source: str, base: Path | None = None) -> Config:
    """Validate config data; relative paths are taken from the config file's folder."""
    if not isinstance(data, dict):
        what = "an empty file" if data is None else type(data).__name__
        raise ConfigError(f"{shown(source)}: the config must be a mapping, got {what}")
    try:
        config = Config.model_validate(data, context={"base": base})  # pipelines' files compared where opened
    except ValidationError as exc:
        raise ConfigError(f"{shown(source)}: {_errors_line(exc)}") from None
    return _resolve(config, base, source) if base is not None else config


def _resolve(config: Config, base: Path, source: str) -> Config:
    """Every file the config names (model files, TLS, password, token and key files, ``state_dir``)
    with ``~`` expanded and a relative one taken from ``base``, the config file's folder: never
    from the working directory, so a config checked in one folder runs the same under systemd.
    So are a pipeline's source and sinks where they name files (``PipelineConfig.taken_from``).

    Raises:
        ConfigError: a ``~`` or ``~user`` that names no home directory, with the key (a pipeline's
            was refused as it was validated).
    """

    def fix(path: str | None, key: str) -> str | None:
        try:
            return None if path is None else str(base / _home(path))
        except ValueError as exc:
            raise ConfigError(shown(f"{source}: {key}: {exc}")) from None

    models = {k: m.model_copy(update={"path": fix(m.path, f"models.{k}.path")}) for k, m in config.models.items()}
    keys = [fix(k, f"ota.trusted_keys.{i}") or k for i, k in enumerate(config.ota.trusted_keys)]
    update: dict[str, Any] = {
        "models": models,
        "pipelines": {k: p.taken_from(base) for k, p in config.pipelines.items()},
        "ota": config.ota.model_copy(update={"trusted_keys": keys}),
        "api": config.api.model_copy(update={"token_file": fix(config.api.token_file, "api.token_file")}),
        "state_dir": fix(config.state_dir, "state_dir"),
    }
    if config.mqtt is not None:
        files = ("ca_file", "cert_file", "key_file", "password_file")
        update["mqtt"] = config.mqtt.model_copy(update={f: fix(getattr(config.mqtt, f), f"mqtt.{f}") for f in files})
    return config.model_copy(update=update)


def _home(path: str) -> str:
    """``path`` with a leading ``~`` or ``~user`` expanded; ``ValueError`` where there is no such home
    directory (``$HOME`` unset and no password entry, or no such user): left as it is, it would be a
    folder named ``~`` in the config's folder."""
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        head = path.split("/", 1)[0]
        reason = (
            f"$HOME is not set and uid {os.getuid()} has no home directory in the password database"
            if head == "~"
            else f"no user {head[1:]!r} in the password database"
        )
        raise ValueError(f"cannot expand {head} in {path}: {reason}")
    return expanded


_TLS_KEYS = ("ca_file", "cert_file", "key_file")


def check_runnable(config: Config, source: str) -> list[str]:
    """Refuse, in one line, a valid config whose model files are not there or whose secret files
    the daemon could not use; name the secret files that are not there yet.

    Model paths are checked as the daemon opens them, once ``load_config`` has resolved
    them against the config's folder. The
    API's token file (with the API on) and the MQTT password file are read as the daemon
    reads them at start, and so are the MQTT TLS files and OTA's trusted keys. One that is not there is a note, not an
    error: a config is often checked on another machine than the device its files are installed on.

    Returns:
        One line per secret or TLS file that is not there (the daemon stops at start without it).

    Raises:
        ConfigError: a model file is missing or is not a file, or a secret file that is
            there cannot be read or holds no usable token (up to three named, then a count).
    """
    problems = []
    for name, model in config.models.items():
        path = Path(model.path)
        try:
            path.stat()
        except FileNotFoundError:
            problems.append(f"models.{name}.path: model file not found: {model.path}")
            continue
        except OSError as exc:  # a name too long, a folder on the way that is not one or cannot be searched
            problems.append(f"models.{name}.path: model file not found: {model.path} ({exc.strerror})")
            continue
        if not path.is_file():
            problems.append(f"models.{name}.path: not a model file: {model.path}")
    secrets: list[tuple[str, str, Callable[[], str | None]]] = []
    if config.api.enabled and config.api.token_file:  # read only to start the API
        secrets.append(("api.token_file", config.api.token_file, config.api.resolved_token))
    if config.mqtt is not None and config.mqtt.password_file:
        secrets.append(("mqtt.password_file", config.mqtt.password_file, config.mqtt.resolved_password))
    tls = [] if config.mqtt is None else [(f"mqtt.{k}", getattr(config.mqtt, k)) for k in _TLS_KEYS]
    keys = [(f"ota.trusted_keys[{i}]", key) for i, key in enumerate(config.ota.trusted_keys)]
    missing = [
        (key, file)
        for key, file in [*tls, *((k, f) for k, f, _ in secrets), *keys]
        if file and not os.path.lexists(file)
    ]
    notes = [f"{key} {file} is not there: the daemon stops at start until it is" for key, file in missing]
    notes += _pipeline_files_not_there(config)
    gone = {key for key, _ in missing}
    if config.mqtt is not None and not gone & {key for key, _ in tls}:
        try:
            config.mqtt.check_tls_files()  # as the daemon checks them at start
        except ConfigError as exc:
            problems.append(str(exc))
    for key, _, read in secrets:
        if key not in gone:
            try:
                read()  # as the daemon reads it at start
            except ConfigError as exc:
                problems.append(str(exc))
    try:
        check_trusted_keys(config.ota.trusted_keys, gone)  # as the daemon reads them at start
    except ConfigError as exc:  # a certificate, a private key
        problems.append(str(exc))
    if problems:
        raise ConfigError(shown(f"{source}: {_one_line(problems)}"))
    return notes


def check_trusted_keys(paths: list[str], skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Read each of ``ota.trusted_keys`` as the OTA agent will (``TrustedKeys.load``), one at a time, so
    that the first one that cannot be used (a certificate, a private key, not Ed25519) is named by its key:
    ``ota.trusted_keys[1]: trusted key ...``. ``skip``: the keys (``ota.trusted_keys[N]``) not to read.

    Raises:
        ConfigError: a key that cannot be used, named.
    """
    from edgerun.ota.envelope import TrustedKeys

    for i, path in enumerate(paths):
        key = f"ota.trusted_keys[{i}]"
        if key not in skip:
            try:
                TrustedKeys.load([path])
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from exc


def _pipeline_files_not_there(config: Config) -> list[str]:
    """A line per pipeline source (one file or folder) or file sink's folder that is not there: the daemon's
    pipeline waits for it, tried again every ``restart_s``; a ``DIR/`` sink is made with its folders."""
    from edgerun.sinks import sink_kind
    from edgerun.sources import missing_path

    notes = []
    for name, pipeline in config.pipelines.items():
        wait = f"the pipeline waits for it (tried every {pipeline.restart_s:g} s)"
        if missing_path(pipeline.source):
            notes.append(f"pipelines.{name}.source {pipeline.source} is not there: {wait}")
        for i, sink in enumerate(pipeline.sinks):
            folder, kind = os.path.dirname(sink), sink_kind(sink)
            if kind in _FILE_SINKS and kind != "images" and folder and not os.path.isdir(folder):
                notes.append(f"pipelines.{name}.sinks[{i}] {sink}: its folder is not there: {wait}")
    return notes


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config file (UTF-8)."""
    import yaml

    from edgerun.card import yaml_loader, yaml_problem

    path = Path(path)
    text = read_utf8(path, "config", ConfigError, CONFIG_MAX_BYTES)
    try:
        data = yaml.load(text, Loader=yaml_loader(pure=True))  # a SafeLoader subclass: keys once, no objects
    except yaml.YAMLError as exc:
        raise ConfigError(shown(f"{path}: not valid YAML{yaml_problem(exc, text)}")) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(shown(f"{path}: not valid YAML: nested too deeply")) from None
    return parse_config(data, str(path), base=path.parent)


def default_config() -> Config:
    """The built-in default: the sample digits model, the API on 127.0.0.1, no broker, offline."""
    here = Path(__file__).resolve().parent.parent / "models" / "digits" / "digits_int8.tflite"
    candidates = [here, Path.cwd() / "models" / "digits" / "digits_int8.tflite"]
    model = next((p for p in candidates if p.is_file()), None)
    if model is None:
        raise ConfigError(
            "no config given and the sample model models/digits/digits_int8.tflite is not here: "
            "run from the edgerun checkout or give --config FILE"
        )
    return Config(models={"digits": ModelConfig(path=str(model))})
