"""Bounds shared by the command line, a daemon config and the library, so that each says the same.

A light module (no imports): the command line checks its options against these
before it loads anything.
"""

__all__ = ["BATCH_SIZE_MAX", "FPS_MAX", "FPS_MIN", "MAX_FRAMES_MAX", "PREPARE_WORKERS_MAX", "THREADS_MAX"]

#: The most frames one inference call takes (``--batch-size``, ``batch_size:``, ``Pipeline(batch_size=)``).
BATCH_SIZE_MAX = 256
#: The most threads decoding encoded inputs in parallel (``--prepare-workers``, ``prepare_workers:``).
PREPARE_WORKERS_MAX = 64
#: The most CPU threads a model's runtime is given (``--threads``, ``edgerun.load(threads=)``).
THREADS_MAX = 256
#: The rates a pipeline is paced to, and a camera asked for (``--fps``, ``fps:``, ``Pipeline(fps=)``):
#: below, the wait between two frames is longer than any clock holds (1e-300 fps overflowed ``Event.wait``).
FPS_MIN = 0.0001
FPS_MAX = 1000.0
#: The most frames a run may be limited to (``--max-frames``, ``Pipeline(max_frames=)``): a signed 64-bit count.
MAX_FRAMES_MAX = 2**63 - 1
