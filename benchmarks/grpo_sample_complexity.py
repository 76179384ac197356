"""How many GRPO samples does it take to FIND the better selection under the mention oracle?

    python benchmarks/grpo_sample_complexity.py --data runs/tiny-cpu/data --history 20 --steps 30 150 1000

An idealized policy instead of an LLM: one keep/drop logit per history position (20 parameters,
no text to read), trained by the same group-relative policy gradient as GRPO (G completions per
prompt, advantages (r - mean) / (std + 1e-4)), rewarded by the same oracle (item-kNN from the kept
items = `mention` reading their titles) with the binary, rank (1/rank) or soft reward. It starts
from "keep each event with probability 1/2" and is evaluated greedily (keep where the logit > 0)
on all valid users, beside the template (keep all) and the best recent-k rule.

The question it answers: with the ~80 prompt groups a CPU affords in ten minutes (20 steps x 4
prompts), can ANY policy learn the better selection from the reward alone, or does a learned
verbalizer on a CPU live off its starting point? Seeds are fixed; the output is deterministic.
"""

from __future__ import annotations

import argparse

import numpy as np


def similarity_tensor(data, examples, history: int, knn):
    """S (E, H, C): cosine of each history position's item with each candidate; M (E, H) valid."""
    hid = data.history_ids(examples, max_events=history)
    cands = np.stack(examples["candidates"].to_numpy(zero_copy_only=False)).astype(np.int64)
    e_n, c_n = cands.shape
    s = np.zeros((e_n, history, c_n))
    m = np.zeros((e_n, history), dtype=bool)
    for e in range(e_n):
        h = hid[e].astype(np.int64)
        n = len(h)
        if n:
            s[e, history - n:] = knn.similarity(np.repeat(h, c_n), np.tile(cands[e], n)).reshape(n, c_n)
            m[e, history - n:] = True
    return s, m, examples["label"].to_numpy().astype(int)


def reward(scores: np.ndarray, labels: np.ndarray, mode: str) -> np.ndarray:
    from minivz.metrics import rank_metrics
    from minivz.train.rewards import soft_accuracy

    if mode == "soft":
        return np.array([soft_accuracy(s, lab) for s, lab in zip(scores, labels)])
    per = rank_metrics(scores, labels)
    return per["recall@1"] if mode == "binary" else per["mrr"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a prepared MovieLens data dir (minivz data prepare)")
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 150, 1000])
    ap.add_argument("--prompts", type=int, default=4, help="prompts per step (tiny-cpu: 4)")
    ap.add_argument("--group", type=int, default=4, help="G completions per prompt (tiny-cpu: 4)")
    ap.add_argument("--lr", type=float, default=5.0)
    ap.add_argument("--train", type=int, default=4000, help="train examples to draw prompts from")
    args = ap.parse_args()

    from minivz.dataset import PreparedData
    from minivz.evaluate import item_stats_for
    from minivz.metrics import rank_metrics
    from minivz.reason.knn import ItemKNNReasoner

    data = PreparedData.load(args.data)
    knn = ItemKNNReasoner(item_stats=item_stats_for(data))
    tr = data.examples("train")
    tr = tr.take(np.sort(np.random.default_rng(0).choice(tr.num_rows, min(args.train, tr.num_rows), replace=False)))
    s_tr, m_tr, l_tr = similarity_tensor(data, tr, args.history, knn)
    s_va, m_va, l_va = similarity_tensor(data, data.examples("valid"), args.history, knn)
    h = args.history
    pos = np.arange(h)

    def greedy_r1(keep: np.ndarray) -> float:
        scores = np.einsum("eh,ehc->ec", keep[None].astype(float) * m_va, s_va)
        return float(rank_metrics(scores, l_va)["recall@1"].mean())

    print(f"valid users: {len(l_va)}, history {h}; template (keep all) R@1 {greedy_r1(np.ones(h, bool)):.3f}")
    best_k = max(range(1, h + 1), key=lambda k: greedy_r1(pos >= h - k))
    print(f"best recent-k rule: k={best_k}, R@1 {greedy_r1(pos >= h - best_k):.3f}")
    print(f"{'reward':>7} {'steps':>6} {'groups':>7}  greedy valid R@1 (3 seeds)   kept")
    for mode in ("binary", "rank", "soft"):
        for steps in args.steps:
            res, kept = [], []
            for seed in range(3):
                rng = np.random.default_rng(seed)
                theta = np.zeros(h)
                for _ in range(steps):
                    b = rng.choice(len(l_tr), args.prompts)
                    p = 1 / (1 + np.exp(-theta))
                    a = rng.random((args.prompts, args.group, h)) < p
                    sc = np.einsum("pgh,phc->pgc", a * m_tr[b][:, None], s_tr[b])
                    r = reward(sc.reshape(args.prompts * args.group, -1), np.repeat(l_tr[b], args.group),
                               mode).reshape(args.prompts, args.group)
                    adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-4)
                    theta += args.lr * (adv[..., None] * (a - p)).mean((0, 1))
                res.append(greedy_r1(theta > 0))
                kept.append(int((theta > 0).sum()))
            print(f"{mode:>7} {steps:>6} {steps * args.prompts:>7}  {np.round(res, 3)}   {kept}")


if __name__ == "__main__":
    main()
