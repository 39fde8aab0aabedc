"""The Sink seam: where results go. ``publish(result)`` and ``close()``.

The MQTT results publisher of ``edgerun.sync`` is one more sink.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import msgspec

from edgerun.sources.base import Frame

__all__ = ["Result", "Sink", "error_record", "result_record"]


class Result(msgspec.Struct, frozen=True):
    """One processed frame: the record (as ``edgerun predict --json`` prints it) and its frame.

    ``record`` has ``input``, ``model``, ``version``, ``delegate``, ``output`` and
    ``latency_ms``, or ``input`` and ``error`` for a frame that failed.
    """

    frame: Frame
    record: dict[str, Any]

    @property
    def ok(self) -> bool:
        """False for a failed frame."""
        return "error" not in self.record


@runtime_checkable
class Sink(Protocol):
    """Receives results in order, from one thread.

    A sink may say ``inline = True`` (an attribute) when publishing is cheap and does
    not wait on disk or network (a line on standard output): when every sink of a
    pipeline says so, results are published from the inference thread and the
    pipeline runs without a sink thread. Without it, a sink gets a thread of its own.
    """

    def publish(self, result: Result) -> None:
        """Take one result; raise ``EdgerunError`` only for a failure that must stop the run."""
        ...

    def close(self) -> None:
        """Flush and release; called once, after the last result."""
        ...


def result_record(model: Any, source_id: str, output: Any, latency_ms: float) -> dict[str, Any]:
    """The record of one result, as ``edgerun predict --json`` prints it (and the API returns it)."""
    return {
        "input": source_id,
        "model": model.name,
        "version": model.version,
        "delegate": model.delegate,
        "output": output,
        "latency_ms": round(latency_ms, 3),
    }


def error_record(frame: Frame, message: str) -> dict[str, Any]:
    """The record of an input that failed."""
    return {"input": frame.source_id, "error": message}
