"""Log-likelihood scoring shared by the llamacpp and hf backends.

A candidate's score is the sum (``norm="sum"``) or mean (``norm="mean"``, the default: long titles
are not penalised for their length) of its tokens' log-probabilities after the prompt.
"""

from __future__ import annotations

import numpy as np

NORMS = ("mean", "sum")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; use one of {', '.join(NORMS)}")
    return norm


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """logits: (T, V) rows predicting targets: (T,) -> float64 (T,) log-probabilities."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(x - m).sum(axis=1))
    return x[np.arange(len(targets)), targets] - lse


def reduce_logprobs(lp: np.ndarray, norm: str) -> float:
    if len(lp) == 0:
        return float("-inf")  # an empty candidate text cannot be scored
    return float(lp.sum() if norm == "sum" else lp.mean())


def predict_by_likelihood(scorer, queries: list) -> list:
    """Shared ``predict`` of the likelihood backends (hf, llamacpp): per query, tokenize the prompt
    prefix and the candidates once (``scorer.prepare``), score them with the prefix evaluated once
    (``scorer.score_shared``), and pick the best."""
    from minivz.reason.base import Prediction

    out = []
    for q in queries:
        prefix, cands = scorer.prepare(q)
        out.append(Prediction.from_scores(scorer.score_shared(prefix, cands)))
    return out
