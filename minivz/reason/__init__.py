"""Reasoners: score the candidate items of a verbalized history (see minivz.reason.base).

    from minivz.reason import ItemStats, Query, make_reasoner
    stats = ItemStats.from_sequences(train_sequences, n_items)
    reasoner = make_reasoner("knn", item_stats=stats)
    preds = reasoner.predict([Query(context, candidates, candidate_ids, history_ids)])

Backends (REASONERS): popularity, knn, mention, embedding, llamacpp, openai, hf, and policy (the
training policy's frozen base weights, the co-located oracle). Importing this package loads
no torch/llama_cpp/httpx; each backend imports its engine when it is built.
"""

from minivz.reason.base import (
    REASONERS,
    ItemStats,
    Prediction,
    Query,
    Reasoner,
    ReasonerError,
    make_reasoner,
)

__all__ = [
    "REASONERS",
    "ItemStats",
    "Prediction",
    "Query",
    "Reasoner",
    "ReasonerError",
    "make_reasoner",
]
