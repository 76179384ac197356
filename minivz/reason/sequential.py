"""Sequential recommenders as baseline rows: RecBole's SASRec and GRU4Rec, trained on the train split.

    make_reasoner("sasrec", item_stats=stats)                       # RecBole SASRec, its default sizes
    make_reasoner("gru4rec:epochs=20", item_stats=stats)
    minivz eval --data data/ml100k --reasoner sasrec --limit 500    # a baseline row like popularity/knn

What a user sees beside an LLM reasoner: what a conventional next-item model reaches on the same
examples. The model classes are RecBole's own (``recbole==1.2.1``, installed ``--no-deps`` like the
data; its model code needs ``pip install 'minivz[seqrec]'``); minivz only feeds them:

    train   every user's train sequence (``ItemStats.sequences``: events before the user's first
            valid/test target, so no evaluation target leaks in), one example per position t >= 1:
            input s[t-max_len:t] (left-aligned, 0 = padding, item code + 1), target s[t];
            RecBole's CE loss over all items, Adam, ``epochs`` passes, seeded
    score   the query's history ids (the same history the other rows read), the last ``max_len``
            of them -> the sequence representation (hidden,) -> dot product with each candidate's
            item embedding; an empty history scores every candidate 0

Sizes are RecBole's defaults for each model (SASRec: 2 layers, 2 heads, hidden 64, dropout 0.5;
GRU4Rec: embedding 64, hidden 128, dropout 0.3). It is a baseline row, never the reasoner.
"""

from __future__ import annotations

import time

import numpy as np

from minivz.install import RECBOLE, pip
from minivz.reason.base import ItemStats, Prediction, Query, require_item_stats

# RecBole's defaults (recbole/properties/model/<Model>.yaml) plus the sequence fields it reads.
_RECBOLE_DEFAULTS = {
    "sasrec": {"n_layers": 2, "n_heads": 2, "hidden_size": 64, "inner_size": 256, "hidden_dropout_prob": 0.5,
               "attn_dropout_prob": 0.5, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "initializer_range": 0.02},
    "gru4rec": {"embedding_size": 64, "hidden_size": 128, "num_layers": 1, "dropout_prob": 0.3},
}
_CLASSES = {"sasrec": ("recbole.model.sequential_recommender.sasrec", "SASRec"),
            "gru4rec": ("recbole.model.sequential_recommender.gru4rec", "GRU4Rec")}


def _recbole_class(kind: str):
    """RecBole's model class, imported without its side effect: ``recbole.model.sequential_recommender``
    imports ``sine.py``, which calls ``torch.autograd.set_detect_anomaly(True)`` at import time. That
    switches anomaly detection on for the whole process (a stack trace recorded per op, a NaN check on
    every gradient): SASRec's epoch ran 1.8x slower, and every later training in the process ran with
    it (``minivz recipe`` trains the stage-2 reasoners after the SASRec row). The mode is put back."""
    import importlib

    import torch

    module, attr = _CLASSES[kind]
    anomaly, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ImportError(
            f"the {kind} baseline uses RecBole's model ({e}): `{pip(RECBOLE, no_deps=True)}` and its model "
            "code's imports, `pip install 'minivz[seqrec]'` (scripts/test.sh and scripts/demo.sh install both)") from e
    finally:
        torch.autograd.set_detect_anomaly(anomaly, check_nan=check_nan)


class _Dataset:
    """What RecBole's model constructors read from a dataset: the number of item ids (+ padding 0)."""

    def __init__(self, n_items: int) -> None:
        self.n_items = n_items

    def num(self, field: str) -> int:
        return self.n_items + 1


def training_windows(sequences: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs (N, max_len) int64 left-aligned with 0 padding, lengths (N,), targets (N,)): one row
    per position t >= 1 of every sequence, input = the codes + 1 of s[max(0, t - max_len):t]."""
    rows = sum(max(len(s) - 1, 0) for s in sequences)
    x = np.zeros((rows, max_len), dtype=np.int64)
    n = np.zeros(rows, dtype=np.int64)
    y = np.zeros(rows, dtype=np.int64)
    r = 0
    for s in sequences:
        s = np.asarray(s, dtype=np.int64) + 1
        for t in range(1, len(s)):
            w = s[max(0, t - max_len):t]
            x[r, : len(w)] = w
            n[r], y[r] = len(w), s[t]
            r += 1
    return x, n, y


class SequentialReasoner:
    """A RecBole sequential model trained on the train sequences at construction (see module doc)."""

    def __init__(self, item_stats: ItemStats | None = None, kind: str = "sasrec", epochs: int = 30,
                 max_len: int = 50, learning_rate: float = 1e-3, batch_size: int = 256, seed: int = 0,
                 threads: int = 0) -> None:
        import torch

        stats = require_item_stats(item_stats, kind)
        if stats.sequences is None:
            raise ValueError(f"{kind} trains on the users' ordered train sequences: build the stats with "
                             "ItemStats.from_sequences(train_sequences, n_items)")
        if kind not in _CLASSES:
            raise ValueError(f"kind={kind!r}; use one of {', '.join(_CLASSES)}")
        if epochs < 1 or max_len < 1 or batch_size < 1:
            raise ValueError(f"epochs={epochs}, max_len={max_len}, batch_size={batch_size} must all be >= 1")
        self.name, self.kind, self.max_len, self.n_items = kind, kind, max_len, stats.n_items
        if threads:
            torch.set_num_threads(threads)
        config = {"USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "LIST_SUFFIX": "_list",
                  "ITEM_LIST_LENGTH_FIELD": "item_length", "NEG_PREFIX": "neg_", "MAX_ITEM_LIST_LENGTH": max_len,
                  "device": torch.device("cpu"), "loss_type": "CE", **_RECBOLE_DEFAULTS[kind]}
        torch.manual_seed(seed)
        self.model = _recbole_class(kind)(config, _Dataset(stats.n_items))
        self._torch = torch
        self.train_log = self._fit(stats.sequences, epochs, learning_rate, batch_size, seed)

    def _fit(self, sequences, epochs: int, lr: float, batch_size: int, seed: int) -> list[dict]:
        torch = self._torch
        x, n, y = (torch.from_numpy(a) for a in training_windows(sequences, self.max_len))
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(seed)
        log = []
        self.model.train()
        for epoch in range(epochs):
            t0, total = time.perf_counter(), 0.0
            for idx in torch.randperm(len(y), generator=gen).split(batch_size):
                loss = self.model.calculate_loss({self.model.ITEM_SEQ: x[idx], self.model.ITEM_SEQ_LEN: n[idx],
                                                  self.model.POS_ITEM_ID: y[idx]})
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            log.append({"epoch": epoch + 1, "loss": round(total / max(len(y), 1), 4),
                        "seconds": round(time.perf_counter() - t0, 2)})
        self.model.eval()
        return log

    def predict(self, queries: list[Query]) -> list[Prediction]:
        torch = self._torch
        out: list[Prediction | None] = [None] * len(queries)
        rows = []
        for qi, q in enumerate(queries):
            hist = q.history_ids.astype(np.int64)
            hist = hist[(hist >= 0) & (hist < self.n_items)][-self.max_len:]
            if len(hist) == 0:
                out[qi] = Prediction.from_scores(np.zeros(len(q.candidate_ids)))
            else:
                rows.append((qi, hist + 1))
        if rows:
            x = torch.zeros((len(rows), self.max_len), dtype=torch.long)
            for k, (_, h) in enumerate(rows):
                x[k, : len(h)] = torch.from_numpy(h)
            lengths = torch.tensor([len(h) for _, h in rows])
            with torch.inference_mode():
                seq = self.model.forward(x, lengths)  # (B, hidden)
                for k, (qi, _) in enumerate(rows):
                    cand = queries[qi].candidate_ids.astype(np.int64)
                    known = (cand >= 0) & (cand < self.n_items)
                    scores = np.zeros(len(cand), dtype=np.float64)
                    emb = self.model.item_embedding.weight[torch.from_numpy(cand[known] + 1)]
                    scores[known] = (emb @ seq[k]).double().numpy()
                    out[qi] = Prediction.from_scores(scores)
        return out  # type: ignore[return-value]


def make_sasrec(item_stats: ItemStats | None = None, epochs: int = 30, max_len: int = 50, learning_rate: float = 1e-3,
                batch_size: int = 256, seed: int = 0) -> SequentialReasoner:
    return SequentialReasoner(item_stats, "sasrec", epochs, max_len, learning_rate, batch_size, seed)


def make_gru4rec(item_stats: ItemStats | None = None, epochs: int = 30, max_len: int = 50, learning_rate: float = 1e-3,
                 batch_size: int = 256, seed: int = 0) -> SequentialReasoner:
    return SequentialReasoner(item_stats, "gru4rec", epochs, max_len, learning_rate, batch_size, seed)
