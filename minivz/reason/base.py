"""The reasoner protocol, item statistics for classical baselines, and the backend registry.

A reasoner reads queries (a verbalized history + C candidate items) and scores the candidates:

    queries: list[Query]           Query.candidates has C texts, Query.candidate_ids C int32 codes
    predict(queries) -> list[Prediction]   Prediction.scores: float64 (C,), higher = more likely next

Backends are built from a spec string, ``name`` or ``name:key=value,key=value``:

    make_reasoner("popularity", item_stats=stats)
    make_reasoner("llamacpp:n_ctx=2048,norm=sum")
    make_reasoner("openai:url=http://127.0.0.1:8080/v1,model=x,timeout=30")

This module imports only numpy (scipy lazily); each backend imports its heavy packages when built.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from minivz.spec import coerce_option, parse_spec


@dataclass
class Query:
    context: str  # the verbalized user history (text)
    candidates: list[str]  # candidate item texts, e.g. "Toy Story (1995)"; len C
    candidate_ids: np.ndarray  # int32 item codes of the candidates; (C,)
    history_ids: np.ndarray = field(  # int32 item codes of the raw history, oldest first
        default_factory=lambda: np.zeros(0, dtype=np.int32)
    )

    def __post_init__(self) -> None:
        self.candidate_ids = np.asarray(self.candidate_ids, dtype=np.int32)
        self.history_ids = np.asarray(self.history_ids, dtype=np.int32)
        if len(self.candidates) != len(self.candidate_ids):
            raise ValueError(
                f"Query has {len(self.candidates)} candidate texts but {len(self.candidate_ids)} "
                "candidate_ids; pass one id per candidate text"
            )
        if not self.candidates:
            raise ValueError("Query needs at least one candidate")


@dataclass
class Prediction:
    scores: np.ndarray  # float64 (C,), higher = more likely next item
    choice: int  # index into candidates, -1 when the backend gave no valid answer
    valid: bool

    @classmethod
    def from_scores(cls, scores: np.ndarray) -> "Prediction":
        """A prediction whose choice is the best score (first index on ties)."""
        scores = np.asarray(scores, dtype=np.float64)
        return cls(scores=scores, choice=int(np.argmax(scores)), valid=True)


@runtime_checkable
class Reasoner(Protocol):
    name: str

    def predict(self, queries: list[Query]) -> list[Prediction]: ...


class ReasonerError(RuntimeError):
    """A backend failed in a way that retrying this call will not fix (server down, bad request)."""


class PartialPredictions(ReasonerError):
    """Some queries of a batch failed (after the backend's own retries); ``predictions`` holds the
    others' answers (None where failed), so a caller keeps the successes."""

    def __init__(self, message: str, predictions: list) -> None:
        super().__init__(message)
        self.predictions = predictions


@dataclass
class ItemStats:
    """Training-set item statistics for the classical baselines (popularity, item-kNN).

    counts: float64 (n_items,), interactions per item code in the training events.
    cooc:   (n_items, n_items) symmetric matrix, cooc[i, j] = number of users whose training history
            holds both i and j (the diagonal is the number of distinct users of i). A
            scipy.sparse CSR matrix when scipy is installed, else a dense numpy array.
    """

    n_items: int
    counts: np.ndarray
    cooc: Any
    # catalog titles by item code: the `mention` oracle resolves titles named in a text with them
    titles: list[str] | None = None
    # the per-user train sequences themselves, in time order (the sequential baselines train on them)
    sequences: list[np.ndarray] | None = None
    # catalog genres by item code (a list of names each): a list reasoner may print them per candidate
    genres: list[list[str]] | None = None

    @classmethod
    def from_sequences(cls, user_item_sequences: list[np.ndarray], n_items: int,
                       titles: list[str] | None = None, genres: list[list[str]] | None = None) -> "ItemStats":
        """Build stats from per-user training item sequences (int codes in [0, n_items))."""
        seqs = [np.asarray(s, dtype=np.int64).ravel() for s in user_item_sequences]
        flat = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= n_items):
            raise ValueError(
                f"item codes must lie in [0, {n_items}); got range [{flat.min()}, {flat.max()}]"
            )
        counts = np.bincount(flat, minlength=n_items).astype(np.float64)
        # Binary user x item incidence X; co-occurrence = X^T X counts users, not repeats, so one
        # binge-watcher does not dominate an item pair.
        uniq = [np.unique(s) for s in seqs]
        rows = np.repeat(np.arange(len(seqs)), [len(u) for u in uniq])
        cols = np.concatenate(uniq) if uniq else flat
        try:
            import scipy.sparse as sp
        except ImportError:  # dense fallback: fine for catalogs of a few thousand items
            x = np.zeros((len(seqs), n_items), dtype=np.float64)
            x[rows, cols] = 1.0
            cooc = x.T @ x
        else:
            x = sp.csr_matrix(
                (np.ones(len(rows)), (rows, cols)), shape=(len(seqs), n_items), dtype=np.float64
            )
            cooc = (x.T @ x).tocsr()
        return cls(n_items=n_items, counts=counts, cooc=cooc, titles=titles, sequences=seqs, genres=genres)

    def cooc_diagonal(self) -> np.ndarray:
        d = self.cooc.diagonal()
        return np.asarray(d, dtype=np.float64).ravel()


# ---------------------------------------------------------------------------------------------
# Spec parsing and the registry


def _lazy(module: str, attr: str) -> Callable[..., Reasoner]:
    """A plain factory that imports ``minivz.reason.<module>`` only when called."""

    def factory(**options: Any) -> Reasoner:
        target = getattr(importlib.import_module(f"minivz.reason.{module}"), attr)
        return target(**options)

    factory.__name__ = f"make_{module}"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build minivz.reason.{module}.{attr} (imported on first use)."
    factory.target = (f"minivz.reason.{module}", attr)  # type: ignore[attr-defined]
    return factory


REASONERS: dict[str, Callable[..., Reasoner]] = {
    "popularity": _lazy("popularity", "PopularityReasoner"),
    "knn": _lazy("knn", "ItemKNNReasoner"),
    "mention": _lazy("mention", "MentionReasoner"),
    "embedding": _lazy("embedding", "EmbeddingReasoner"),
    "llamacpp": _lazy("llamacpp", "LlamaCppReasoner"),
    "openai": _lazy("openai", "OpenAIReasoner"),
    "hf": _lazy("hf", "HFReasoner"),
    "policy": _lazy("hf", "FrozenBaseReasoner"),
    "sasrec": _lazy("sequential", "make_sasrec"),
    "gru4rec": _lazy("sequential", "make_gru4rec"),
}
# objects a caller hands to the backends that take them (not settable from a spec string)
CONTEXT = ("item_stats", "policy")


def _backend(factory: Callable[..., Any]) -> Callable[..., Any]:
    """The callable a registry entry builds: a lazy factory's backend class, else the factory."""
    target = getattr(factory, "target", None)
    return getattr(importlib.import_module(target[0]), target[1]) if target is not None else factory


def _signature_of(factory: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(_backend(factory))


def _coerce(factory: Callable[..., Any], params, key: str, value: str) -> Any:
    """``value`` as the backend's parameter ``key`` asks (its annotation, else its default's type)."""
    backend = _backend(factory)
    try:
        hints = typing.get_type_hints(backend.__init__ if inspect.isclass(backend) else backend)
    except (NameError, TypeError):  # an annotation only a type checker can resolve
        hints = {}
    param = params[key]
    default = None if param.default is inspect.Parameter.empty else param.default
    return coerce_option(value, hints.get(key), default, key)


def option_value(name: str, key: str, value: str) -> Any:
    """One option of reasoner ``name`` as make_reasoner types it (annotation, else default's type), for
    callers that read part of a spec themselves (training reads the hf scorer's prompt options)."""
    params = _signature_of(REASONERS[name]).parameters
    if key not in params or key in CONTEXT:
        raise ValueError(f"unknown option {key!r} for reasoner {name!r}")
    return _coerce(REASONERS[name], params, key, value)


def make_reasoner(spec: str, *, item_stats: ItemStats | None = None, policy: Any = None) -> Reasoner:
    """Build a reasoner from ``name`` or ``name:key=value,...`` (see module docstring).

    Option values are converted to the type of the backend's annotation (else its default) for that option. Unknown names
    or options raise ValueError listing the valid ones. ``item_stats`` (training statistics) and
    ``policy`` (a training run's ``(model, tokenizer)``) go to the backends that take them.
    """
    context = {"item_stats": item_stats, "policy": policy}
    name, options = parse_spec(spec, "reasoner")
    if name not in REASONERS:
        raise ValueError(f"unknown reasoner {name!r}; valid names: {', '.join(sorted(REASONERS))}")
    factory = REASONERS[name]
    params = _signature_of(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD and k not in CONTEXT]
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key not in params or key in CONTEXT:
            if takes_any:
                kwargs[key] = value
                continue
            raise ValueError(
                f"unknown option {key!r} for reasoner {name!r}; valid options: "
                f"{', '.join(valid) if valid else '(none)'}"
            )
        kwargs[key] = _coerce(factory, params, key, value)
    kwargs.update({k: v for k, v in context.items() if k in params})
    return factory(**kwargs)


def require_item_stats(item_stats: ItemStats | None, name: str) -> ItemStats:
    if item_stats is None:
        raise ValueError(
            f"reasoner {name!r} needs training item statistics: "
            f"make_reasoner({name!r}, item_stats=ItemStats.from_sequences(train_sequences, n_items))"
        )
    return item_stats

