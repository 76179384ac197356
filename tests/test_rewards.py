"""GRPO reward functions (minivz.train.rewards): fast, no torch, no model.

The oracle here is a real object that follows the Reasoner protocol (``name`` + ``predict``): it
reads the verbalization text and scores each candidate by whether its title appears in it.
"""

import json

import numpy as np
import pytest

from minivz.reason.base import Prediction, Reasoner
from minivz.train.rewards import (REWARDS, RewardState, accuracy_from_prediction, accuracy_reward,
                                  build_reward_funcs, length_reward)


class MentionOracle:
    """Scores candidate c by 1 if its text is named in the context, plus a tiny position tie-break.

    ``fail_on``: contexts containing this substring raise (a flaky backend) for the first
    ``fail_times`` calls that include them; ``invalid_on``: such contexts get valid=False forever.
    """

    name = "mention"

    def __init__(self, fail_on: str | None = None, fail_times: int = 0, invalid_on: str | None = None):
        self.fail_on, self.fail_times, self.invalid_on = fail_on, fail_times, invalid_on
        self.calls = 0

    def predict(self, queries):
        self.calls += 1
        if self.fail_on and self.fail_times > 0 and any(self.fail_on in q.context for q in queries):
            self.fail_times -= 1
            raise ConnectionError("oracle flaked")
        out = []
        for q in queries:
            s = np.array([float(c in q.context) - 1e-3 * i for i, c in enumerate(q.candidates)])
            p = Prediction.from_scores(s)
            if self.invalid_on and self.invalid_on in q.context:
                p = Prediction(scores=s, choice=-1, valid=False)
            out.append(p)
        return out


CANDS = ["Alien (1979)", "Heat (1995)", "Fargo (1996)"]


def batch(texts, labels=None, template_chars=100):
    n = len(texts)
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    kwargs = {
        "example_id": list(range(n)),
        "candidates": [CANDS] * n,
        "candidate_ids": [[0, 1, 2]] * n,
        "history_ids": [[5, 6]] * n,
        "label": labels if labels is not None else [1] * n,
        "template_chars": [template_chars] * n,
        "n_events": [2] * n,
    }
    return completions, kwargs


def test_oracle_follows_protocol():
    assert isinstance(MentionOracle(), Reasoner)


def test_binary_accuracy_reads_the_text():
    state = RewardState(MentionOracle())
    completions, kw = batch(["loves Heat (1995)", "loves Alien (1979)", "nothing"], labels=[1, 1, 0])
    assert accuracy_reward(completions, state=state, **kw) == [1.0, 0.0, 1.0]  # "nothing": tie -> first
    assert state.step.n == 3 and state.step.excluded == 0


def test_rank_accuracy_is_dense():
    assert accuracy_from_prediction(np.array([0.1, 0.9, 0.5]), 1, 1, "rank") == 1.0
    assert accuracy_from_prediction(np.array([0.1, 0.9, 0.5]), 1, 2, "rank") == 0.5
    assert accuracy_from_prediction(np.array([0.1, 0.9, 0.5]), 1, 0, "rank") == pytest.approx(1 / 3)
    # ties: expected value under random tie-breaking, as minivz.metrics scores an evaluation
    assert accuracy_from_prediction(np.array([0.5, 0.5, 0.1]), 0, 1, "rank") == pytest.approx(0.75)
    # a text giving the oracle nothing (all tied) earns the random floor, never full marks
    assert accuracy_from_prediction(np.zeros(10), 0, 0, "binary") == pytest.approx(0.1)
    assert accuracy_from_prediction(np.zeros(10), 0, 3, "rank") == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    state = RewardState(MentionOracle(), accuracy="rank")
    completions, kw = batch(["Fargo (1996)", "Heat (1995)"], labels=[1, 1])
    r = accuracy_reward(completions, state=state, **kw)
    assert r[1] == 1.0 and 0 < r[0] < 1


def test_transient_failure_is_retried_and_scored():
    oracle = MentionOracle(fail_on="Heat", fail_times=1)
    state = RewardState(oracle, max_retries=2)
    completions, kw = batch(["Heat (1995)", "Alien (1979)"])
    assert accuracy_reward(completions, state=state, **kw) == [1.0, 0.0]
    assert state.step.oracle_errors == 1 and state.step.oracle_retries == 2 and state.step.excluded == 0


def test_persistent_failure_is_excluded_not_zero():
    # "Heat" contexts keep failing: they come back None (excluded); the others are still scored,
    # because after a batch failure queries are retried one by one.
    oracle = MentionOracle(fail_on="Heat", fail_times=100)
    state = RewardState(oracle, max_retries=2)
    completions, kw = batch(["Heat (1995)", "Alien (1979)", "Heat again"], labels=[1, 0, 1])
    acc = accuracy_reward(completions, state=state, **kw)
    assert acc == [None, 1.0, None]
    # length is None for the same rows, so TRL marks them unscorable (not nansum-ed to 0)
    assert length_reward(completions, state=state, **kw)[0] is None
    assert length_reward(completions, state=state, **kw)[2] is None
    st = state.flush()
    assert st.excluded == 2 and st.oracle_errors == 1 + 2 * 2
    assert "oracle flaked" in st.last_error
    assert state.totals["excluded"] == 2 and state.step.n == 0


def test_invalid_answers_are_excluded_and_counted():
    state = RewardState(MentionOracle(invalid_on="???"), max_retries=1)
    completions, kw = batch(["???", "Heat (1995)"])
    assert accuracy_reward(completions, state=state, **kw) == [None, 1.0]
    assert state.step.oracle_invalid == 2 and state.step.excluded == 1


def test_all_failed_raises_instead_of_training_on_nothing():
    state = RewardState(MentionOracle(fail_on="", fail_times=100), max_retries=1)
    state.oracle.fail_on = "a"
    completions, kw = batch(["a", "ab"])
    with pytest.raises(RuntimeError, match="oracle failed on all 2"):
        accuracy_reward(completions, state=state, **kw)


def test_length_band():
    state = RewardState(MentionOracle(), lo=0.2, hi=0.6, softness=0.25)
    texts = ["x" * 10, "x" * 20, "x" * 40, "x" * 60, "x" * 90, ""]
    completions, kw = batch(texts, template_chars=100)
    r = np.array(length_reward(completions, state=state, **kw))
    assert r[1] == r[2] == r[3] == 1.0  # inside [0.2, 0.6]
    assert 0 < r[0] < 1 and 0 < r[4] < 1  # decays outside
    assert r[5] == pytest.approx(np.exp(-0.5 * (0.2 / 0.05) ** 2))  # empty text: ratio 0
    assert state.step.ratio == pytest.approx([0.1, 0.2, 0.4, 0.6, 0.9, 0.0])


def test_action_variant_renders_before_scoring():
    events = [{"title": "Heat", "year": 1995, "genres": ["Action"]},
              {"title": "Alien", "year": 1979, "genres": ["Horror"]}]
    state = RewardState(MentionOracle(), variant="action")
    completions, kw = batch(["1: keep meta\n2: drop", "1: drop\n2: keep meta"], labels=[1, 1])
    kw["events_json"] = [json.dumps(events)] * 2
    assert accuracy_reward(completions, state=state, **kw) == [1.0, 0.0]
    assert state.step.verbalization[0] == "Heat (1995) | Action"


def test_build_reward_funcs_orders_names_and_weights():
    state = RewardState(MentionOracle())
    funcs, weights = build_reward_funcs(["length", "accuracy"], state, [0.2, 1.0])
    assert [f.__name__ for f in funcs] == ["accuracy", "length"] and weights == [1.0, 0.2]
    funcs, weights = build_reward_funcs(["accuracy", "length"], state, [0.0, 1.0])
    assert [f.__name__ for f in funcs] == ["length"] and weights == [1.0]
    with pytest.raises(ValueError, match="unknown rewards"):
        build_reward_funcs(["fluency"], state, [1.0])
    completions, kw = batch(["Heat (1995)", "x"])
    funcs, weights = build_reward_funcs(["accuracy", "length"], state, [1.0, 0.5])
    per_func = np.array([f(completions, **kw) for f in funcs], dtype=float)  # TRL calls them in order
    total = weights @ per_func
    assert total[0] == pytest.approx(1.0 + 0.5 * per_func[1, 0])
    assert set(REWARDS) == {"accuracy", "length"}


def test_soft_accuracy_is_dense_scale_free_and_floors_ties():
    from minivz.train.rewards import soft_accuracy

    assert soft_accuracy(np.zeros(10), 3) == pytest.approx(0.1)  # nothing to go on: the random floor
    s = np.array([0.1, 0.2, 0.3, 0.4])
    assert soft_accuracy(s, 3) == pytest.approx(soft_accuracy(100 * s + 7, 3))  # scale and shift free
    # moves with the target's margin even when its rank does not change
    assert soft_accuracy(np.array([0.1, 0.2, 0.3, 0.9]), 3) > soft_accuracy(s, 3) > soft_accuracy(s, 2)
    assert soft_accuracy(np.array([0.1, -np.inf, 0.3]), 1) == 0.0  # an invalid target scores 0
    assert 0 < accuracy_from_prediction(s, 3, 3, "soft") < 1
    with pytest.raises(ValueError, match="binary, rank or soft"):
        RewardState(MentionOracle(), accuracy="top5")


def test_select_variant_renders_template_lines_before_scoring():
    lines = ["1997-12-04 15:55 | rate | Heat (1995) | Action", "1997-12-04 15:56 | rate | Alien (1979) | Horror"]
    state = RewardState(MentionOracle(), variant="select")
    completions, kw = batch(["2", "1", "nothing"], labels=[1, 1, 1])
    kw["events_json"] = [json.dumps(lines)] * 3
    # "2" = the second newest = the older line (Heat); "1" = the newest (Alien)
    assert accuracy_reward(completions, state=state, **kw)[:2] == [1.0, 0.0]
    assert state.step.verbalization == [lines[0], lines[1], ""]
