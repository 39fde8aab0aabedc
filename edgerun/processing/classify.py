"""Classification post-processing: softmax and top-k."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["softmax", "looks_like_probabilities", "top_k"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def looks_like_probabilities(scores: np.ndarray) -> bool:
    """True when ``scores`` (one row) are already non-negative and sum to about 1."""
    return bool(scores.min() >= 0.0 and abs(float(scores.sum()) - 1.0) < 0.02)


def top_k(scores: np.ndarray, k: int, labels: Sequence[str] | None) -> list[dict[str, object]]:
    """The ``k`` best classes of one score row as ``{label, index, score}``, best first.

    ``labels``, where given, name every class, one a score: never some by name and the rest by index.

    Raises:
        ValueError: ``labels`` count other than the scores (``Model.postprocess`` says which card).
    """
    if labels is not None and len(labels) != scores.shape[-1]:
        raise ValueError(f"{len(labels)} labels for {scores.shape[-1]} class scores")
    k = min(k, scores.shape[-1])
    # A stable sort, so equal scores keep index order (argpartition would pick among ties at random).
    best = np.argsort(-scores, kind="stable")[:k]
    result = []
    for i in best.tolist():
        label = labels[i] if labels is not None else str(i)
        result.append({"label": label, "index": i, "score": round(float(scores[i]), 6)})
    return result
