"""GRPO rewards for the verbalizer: a registry of plain callables with TRL's signature.

    from minivz.train.rewards import RewardState, build_reward_funcs
    state = RewardState(oracle=make_reasoner("embedding"), accuracy="binary", lo=0.2, hi=0.6)
    funcs, weights = build_reward_funcs(["accuracy", "length"], state, [1.0, 0.2])
    GRPOTrainer(..., reward_funcs=funcs, args=GRPOConfig(reward_weights=weights, ...))

Each reward is ``f(completions, **kwargs) -> list[float | None]``, one value per completion
(B*G of them, the G completions of a prompt contiguous). TRL passes the dataset's extra columns as
kwargs, one list entry per completion; the columns ``minivz.train.grpo`` writes are:

    example_id: int                 candidates: list[str] (C item texts)
    label: int (index of the target) candidate_ids: list[int] (C item codes)
    history_ids: list[int]          template_chars: int (chars of the template text shown)
    n_events: int                   events_json: str (event fields render_actions needs; action variant)

A completion the oracle cannot score (it raised, or gave no valid answer, ``max_retries`` times)
is EXCLUDED: every reward returns ``None`` for it. TRL 1.16 turns None into NaN; a row that is NaN
in *all* reward functions is "unscorable" (``unscorable_mask`` in ``_generate_and_score_completions``):
it is left out of the group's nanmean/nanstd baseline and its advantage is forced to 0. A row NaN in
only one function would be ``nansum``-ed to 0 for that function, i.e. scored 0 silently; that is
why ``length`` also returns None where ``accuracy`` failed (``accuracy`` must come first in the
list, ``build_reward_funcs`` enforces it). Exclusions are counted in ``state.step``.

Group advantages are TRL's own (``scale_rewards="group"``: (r - mean) / (std + 1e-4) per group),
which ``tests/test_advantages_trl.py`` proves equal to ``minivz.kernels.group_advantages``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from minivz.kernels import plateau_length_reward


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return str(completion)


def render_verbalization(text: str, variant: str, events_json: str | None = None, n_events: int = 0,
                         render: str = "template") -> str:
    """What the oracle reads: the rewrite itself, or the kept lines rendered by code (action: from
    the event fields in ``events_json``; select: ``events_json`` holds each event's unit as
    ``minivz.verbalize.llm.select_units`` writes it for ``render``)."""
    if variant == "rewrite":
        return text.strip()
    events = json.loads(events_json) if events_json else []
    if variant == "select":
        from minivz.verbalize.llm import parse_selection, render_selection

        picks, _counts = parse_selection(text, len(events))
        return render_selection(events, picks, render)
    from minivz.verbalize.llm import parse_decisions, render_actions

    actions, _counts = parse_decisions(text, n_events or len(events))
    return render_actions(events, actions)


def soft_accuracy(scores: np.ndarray, label: int) -> float:
    """The target's softmax probability over the standardized scores, ``softmax((s - mean) / std)``:
    scale-free (an oracle's scores may be cosines, log-probs or counts), 1/C when every candidate is
    tied (the random floor, as the metrics count ties), and it moves with every change of the
    target's margin, not only when its rank changes. -inf scores (invalid) get probability 0."""
    s = np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(s)
    if not ok[label]:
        return 0.0
    sd = s[ok].std()
    if not sd > 0:
        return 1.0 / ok.sum()
    z = np.where(ok, (s - s[ok].mean()) / sd, -np.inf)
    p = np.exp(z - z[ok].max())
    return float(p[label] / p.sum())


def accuracy_from_prediction(scores: np.ndarray, choice: int, label: int, mode: str) -> float:
    """binary: Recall@1 of the target; rank: 1/rank (MRR); soft: ``soft_accuracy``. binary and rank
    are the expected value under random tie-breaking, exactly as minivz.metrics scores an
    evaluation: a text that gives the oracle nothing to go on (every candidate tied) earns the random
    floor (1/C, H_C/C), not full marks -- counting ties in the target's favour let a policy collect
    1.0 by naming no title at all."""
    from minivz.metrics import rank_metrics

    s = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(s[label]):
        return 0.0
    if mode == "soft":
        return soft_accuracy(s, label)
    per = rank_metrics(s[None, :], np.array([label]))
    return float(per["recall@1" if mode == "binary" else "mrr"][0])


@dataclass
class StepStats:
    """What the rewards saw since the last ``RewardState.flush()`` (one optimizer step)."""

    n: int = 0
    excluded: int = 0
    oracle_errors: int = 0
    oracle_invalid: int = 0
    oracle_retries: int = 0
    oracle_seconds: float = 0.0
    reward_seconds: float = 0.0
    last_error: str = ""
    # per completion, in TRL's order (B*G), appended call by call
    example_id: list = field(default_factory=list)
    completion: list = field(default_factory=list)  # the policy's raw answer (differs for action/select)
    verbalization: list = field(default_factory=list)
    ratio: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    length: list = field(default_factory=list)


class OracleDown(RuntimeError):
    """The oracle failed on every completion of a step: training stops (after saving a checkpoint)."""


class RewardState:
    """The frozen oracle, the reward settings, and per-step counters shared by the reward functions.

    ``oracle`` follows the ``minivz.reason.Reasoner`` protocol (``predict(list[Query]) ->
    list[Prediction]``). ``predict`` is called once per reward call with the whole batch (backends
    batch or parallelize internally); on an exception the batch is retried, then each query alone,
    so one bad sample does not exclude its neighbours. A ``ReasonerError`` (an HTTP backend that has
    already retried within its own deadline) is not retried again; answers a failing batch did get
    (``PartialPredictions``) are kept. Retrying stops once ``deadline`` seconds have passed in one call.
    """

    def __init__(self, oracle: Any, accuracy: str = "binary", lo: float = 0.2, hi: float = 0.6,
                 softness: float = 0.25, variant: str = "rewrite", max_retries: int = 2,
                 render: str = "template", deadline: float = 600.0) -> None:
        if accuracy not in ("binary", "rank", "soft"):
            raise ValueError(f"accuracy={accuracy!r}: use binary, rank or soft")
        if variant not in ("rewrite", "action", "select"):
            raise ValueError(f"variant={variant!r}: use rewrite, action or select")
        self.oracle, self.accuracy_mode, self.variant, self.render = oracle, accuracy, variant, render
        self.lo, self.hi, self.softness, self.max_retries = lo, hi, softness, max_retries
        self.deadline = deadline
        self.step = StepStats()
        self.totals = {"completions": 0, "excluded": 0, "oracle_errors": 0, "oracle_invalid": 0}
        self._failed: tuple[int, list[bool]] | None = None  # (id(completions), mask) of the last accuracy call
        self._texts: tuple[int, list[str]] | None = None

    # -- helpers -----------------------------------------------------------------------------

    def verbalizations(self, completions: list, kwargs: dict) -> list[str]:
        """Rendered texts, computed once per TRL batch (both rewards read them)."""
        if self._texts is not None and self._texts[0] == id(completions) and len(self._texts[1]) == len(completions):
            return self._texts[1]
        n = len(completions)
        events = kwargs.get("events_json") or [None] * n
        n_events = kwargs.get("n_events") or [0] * n
        raw = [completion_text(c) for c in completions]
        texts = [render_verbalization(t, self.variant, e, k, self.render) for t, e, k in zip(raw, events, n_events)]
        self._texts = (id(completions), texts)
        st = self.step  # a new TRL batch: record what samples.jsonl needs once
        st.n += n
        st.example_id.extend(int(x) for x in kwargs.get("example_id") or [-1] * n)
        st.completion.extend(raw)
        st.verbalization.extend(texts)
        return texts

    def failed_mask(self, completions: list) -> list[bool]:
        if self._failed is not None and self._failed[0] == id(completions):
            return self._failed[1]
        return [False] * len(completions)

    def _predict_with_retries(self, queries: list) -> list[Any | None]:
        """Predictions, ``None`` where the oracle still fails after ``max_retries`` retries."""
        from minivz.reason.base import PartialPredictions, ReasonerError

        st = self.step
        out: list[Any | None] = [None] * len(queries)
        todo = list(range(len(queries)))
        t_end = time.monotonic() + self.deadline
        for attempt in range(self.max_retries + 1):
            if not todo or (attempt and time.monotonic() >= t_end):
                break
            if attempt:
                st.oracle_retries += len(todo)
            # first the whole batch; after a failure, query by query so only bad ones stay bad
            groups = [todo] if attempt == 0 else [[i] for i in todo]
            still, final = [], []
            for g in groups:
                t0 = time.perf_counter()
                try:
                    preds = self.oracle.predict([queries[i] for i in g])
                    if len(preds) != len(g):
                        raise RuntimeError(f"oracle returned {len(preds)} predictions for {len(g)} queries")
                except Exception as e:  # noqa: BLE001 - any backend failure is retried, then excluded
                    st.oracle_errors += 1
                    st.last_error = f"{type(e).__name__}: {e}"[:500]
                    if isinstance(e, PartialPredictions):  # keep what the batch did get
                        preds = e.predictions
                    else:
                        # a ReasonerError was retried by its backend already: one retry layer
                        (final if isinstance(e, ReasonerError) else still).extend(g)
                        continue
                finally:
                    st.oracle_seconds += time.perf_counter() - t0
                for i, p in zip(g, preds):
                    if p is None:
                        final.append(i)
                    elif getattr(p, "valid", True):
                        out[i] = p
                    else:
                        st.oracle_invalid += 1
                        still.append(i)
            todo = still
        return out

    def flush(self) -> StepStats:
        """Hand over this step's stats and start a new step."""
        st, self.step = self.step, StepStats()
        self.totals["completions"] += st.n
        self.totals["excluded"] += st.excluded
        self.totals["oracle_errors"] += st.oracle_errors
        self.totals["oracle_invalid"] += st.oracle_invalid
        return st


# -- the reward functions ------------------------------------------------------------------------


def accuracy_reward(completions: list, *, state: RewardState, **kwargs) -> list[float | None]:
    """1 if the frozen oracle, reading the verbalization, ranks the true next item first (binary),
    or 1/rank of it (rank); None if the oracle failed on this completion (excluded, counted)."""
    from minivz.reason.base import Query

    t0 = time.perf_counter()
    st = state.step
    texts = state.verbalizations(completions, kwargs)
    queries = [Query(context=t, candidates=list(c), candidate_ids=np.asarray(ci, dtype=np.int32),
                     history_ids=np.asarray(h if h is not None else [], dtype=np.int32))
               for t, c, ci, h in zip(texts, kwargs["candidates"], kwargs["candidate_ids"],
                                      kwargs.get("history_ids") or [None] * len(texts))]
    preds = state._predict_with_retries(queries)
    rewards: list[float | None] = []
    failed = []
    for p, label in zip(preds, kwargs["label"]):
        if p is None:
            rewards.append(None)
            failed.append(True)
        else:
            rewards.append(accuracy_from_prediction(p.scores, p.choice, int(label), state.accuracy_mode))
            failed.append(False)
    if failed and all(failed):
        raise OracleDown(
            f"the oracle failed on all {len(failed)} completions of this step (after "
            f"{state.max_retries} retries); last error: {st.last_error or 'invalid answers'}. "
            "Check the oracle (is its server running?) before training on nothing.")
    state._failed = (id(completions), failed)
    st.excluded += sum(failed)
    st.accuracy.extend(rewards)
    st.reward_seconds += time.perf_counter() - t0
    return rewards


def length_reward(completions: list, *, state: RewardState, **kwargs) -> list[float | None]:
    """Plateau reward of the compression ratio len(verbalization) / len(template text), both in
    characters: 1 inside [lo, hi], Gaussian decay outside (``minivz.kernels.plateau_length_reward``).
    None where ``accuracy`` excluded the completion (so TRL leaves the whole row out)."""
    t0 = time.perf_counter()
    texts = state.verbalizations(completions, kwargs)
    tmpl = np.asarray(kwargs["template_chars"], dtype=np.float64)
    ratio = np.array([len(t) for t in texts], dtype=np.float64) / np.maximum(tmpl, 1.0)
    r = plateau_length_reward(ratio, state.lo, state.hi, state.softness)
    failed = state.failed_mask(completions)
    out = [None if bad else float(v) for v, bad in zip(r, failed)]
    st = state.step
    st.ratio.extend(ratio.tolist())
    st.length.extend(out)
    st.reward_seconds += time.perf_counter() - t0
    return out


# Registry (open-r1 style): name -> plain function taking (completions, *, state, **kwargs).
REWARDS: dict[str, Callable[..., list[float | None]]] = {
    "accuracy": accuracy_reward,
    "length": length_reward,
}


def build_reward_funcs(names: list[str], state: RewardState, weights: list[float]
                       ) -> tuple[list[Callable[..., list[float | None]]], list[float]]:
    """TRL-ready callables bound to ``state``, named as TRL logs them (``rewards/<name>/mean``).

    Rewards with weight 0 are dropped (no oracle calls for nothing). ``accuracy`` is put first:
    ``length`` reads its exclusion mask.
    """
    if len(names) != len(weights):
        raise ValueError(f"{len(names)} reward names but {len(weights)} weights")
    unknown = [n for n in names if n not in REWARDS]
    if unknown:
        raise ValueError(f"unknown rewards {unknown}; valid: {', '.join(REWARDS)}")
    pairs = sorted(((n, w) for n, w in zip(names, weights) if w != 0), key=lambda p: p[0] != "accuracy")
    funcs = []
    for name, _w in pairs:
        fn = REWARDS[name]

        def bound(completions, _fn=fn, **kwargs):
            return _fn(completions, state=state, **kwargs)

        bound.__name__ = bound.__qualname__ = name
        funcs.append(bound)
    return funcs, [w for _n, w in pairs]
