"""Stage 2 of the paper: freeze the verbalizer, train the REASONER on text it wrote (SFT, + GRPO).

    from minivz.config import ReasonerTrainConfig, resolve
    from minivz.train.reasoner import train_reasoner
    cfg = resolve(ReasonerTrainConfig, recipe="tiny-cpu",
                  overrides=["reasoner_verbalizer=rewrite:model=runs/tiny-cpu/verbalizer/final/merged"])
    summary = train_reasoner(cfg, data_dir="runs/tiny-cpu/data", out="runs/tiny-cpu/reasoner")

    minivz train reasoner --recipe tiny-cpu --data runs/tiny-cpu/data --verbalizer template \\
        --out runs/tiny-cpu/reasoner-template          # the paper's "reasoner only" ablation

What one SFT example is (prompt-completion, loss on the completion only):
    prompt     = EXACTLY the token ids the ``hf`` backend scores with: the ``reasoner_v1`` chat prompt
                 with the verbalized history as {context}, the model's chat template with the
                 assistant header, context cut from its oldest lines to fit (``HFReasoner.prepare``
                 itself is run, on ``HFReasoner.from_model(None, tokenizer)``, so training and
                 scoring cannot drift apart)
    completion = the target item's candidate text ("Toy Story (1995)"), tokenized on its own as the
                 backend tokenizes candidates, + the end-of-turn token (teaches the model to stop,
                 which GRPO's generation needs; the scorer never reads it)
    input_ids (L,) = prompt (P,) ++ completion (C + 1,);  completion_mask (L,) = 0 * P ++ 1 * (C + 1)

The reasoner_v1 prompt does not list the candidates (the backend scores each candidate's text as
the reply), so neither does the training prompt. Optional GRPO (``reasoner_grpo_max_steps > 0``) samples
G replies to the same prompt; accuracy reward = 1 when the reply names the target candidate. Under
``answer=line`` (the candidates listed, each scored at its own line, trained listwise) a reply is one
candidate drawn from the softmax over the line scores: GRPO samples G of them from one forward,
reward +1 / -1, group-normalized (``_line_grpo``).

The run directory is the contract (as ``minivz train verbalizer``):
    RUN/config.yaml, RUN/env.json, RUN/trl_args.json
    RUN/verbalized/{train,valid,test}.jsonl   the frozen verbalizer's text per example (resumable
                                              cache, reused by the self-evaluation)
    RUN/metrics.jsonl    one line per logging step: stage (sft|grpo), step, loss, lr, grad_norm,
                         step_seconds, TRL's mean_token_accuracy / reward
    RUN/checkpoints/step_000050/   SFT checkpoints;  RUN/grpo/checkpoints/step_000010/   GRPO ones
    RUN/final/ LoRA adapter + tokenizer;  RUN/final/merged/  merged HF dir (hf:model=RUN/final/merged)
    RUN/eval/{trained,base,popularity,knn}/   minivz.evaluate runs on the eval split; RUN/summary.json
A killed run resumes from its latest checkpoint when started again with the same ``out``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from minivz.config import trl_args
from minivz.evaluate import item_stats_for
from minivz.rundir import (checkpoint_finished, is_main_process, leave_launch, record_run_config,
                           resumable_on_cpu_ranks, resume_step, step_checkpoints_callback, truncate_jsonl, write_env,
                           write_trl_args)
from minivz.verbalize.cache import verbalize_split

CACHE_VERBALIZER = "cached"


def scoring_view(tokenizer, cfg, max_length: int, item_stats=None):
    """The ``hf`` reasoner the trained model will be scored by, over the tokenizer only: training
    tokenizes through its ``prepare``/``prepare_labels``, so training and scoring cannot drift apart."""
    from minivz.reason.hf import HFReasoner
    from minivz.spec import parse_spec

    _, options = parse_spec(f"hf:{cfg.reasoner_scoring}" if cfg.reasoner_scoring else "hf", "reasoner")
    opts = {k: _scoring_value(k, v) for k, v in options.items()}
    return HFReasoner.from_model(None, tokenizer, prompt=cfg.reasoner_prompt, max_length=max_length,
                                 item_stats=item_stats, **opts)


def scoring_options(cfg) -> str:
    """The hf spec options (",k=v,...") that score a reasoner the way ``cfg`` trains it: its
    reasoner_scoring and reasoner_prompt. The pipeline's stage-2 rows and the self-evaluation use it."""
    return (f",{cfg.reasoner_scoring}" if cfg.reasoner_scoring else "") + \
        (f",prompt={cfg.reasoner_prompt}" if cfg.reasoner_prompt else "")


# the hf options that shape the training prompt (typed by the hf backend itself, as make_reasoner does)
SCORING_OPTIONS = ("answer", "order", "viewers", "genres", "match", "norm")


def _scoring_value(key: str, value: str):
    from minivz.reason.base import option_value

    if key not in SCORING_OPTIONS:
        raise ValueError(f"reasoner_scoring option {key!r} is not read by training; valid: {', '.join(SCORING_OPTIONS)} "
                         "(e.g. --set reasoner_scoring=answer=label,order=popularity,viewers=true)")
    return option_value("hf", key, value)


def build_label_rows(data, rows: list[dict], view) -> list[dict]:
    """``answer=label`` / ``answer=line`` rows: input_ids = the exact prompt the scorer reads (context +
    listed candidates), target = the position of the true item in the list (the label's index),
    label_ids = the labels' token ids (label) or the prompt positions of the lines' ends (line)."""
    from minivz.reason.base import Query

    out = []
    for r in rows:
        q = Query(r["verbalization"], data.item_texts(r["candidates"]), r["candidates"])
        prefix, order, label_ids = view.prepare_listed(q)
        out.append({"input_ids": prefix, "target": order.index(r["label"]), "label_ids": label_ids,
                    "example_id": r["example_id"]})
    return out


def build_sft_rows(data, rows: list[dict], tokenizer, prompt: str, max_length: int) -> list[dict]:
    """Tokenized prompt-completion rows (see module docstring) for TRL's SFTTrainer.

    Each row: input_ids (L,), completion_mask (L,), plus example_id / target text for the logs.
    ``max_length`` bounds L; the eos and the longest candidate are reserved before fitting.
    """
    from minivz.reason.base import Query
    from minivz.reason.hf import HFReasoner

    eos = tokenizer.eos_token_id
    view = HFReasoner.from_model(None, tokenizer, prompt=prompt, max_length=max_length - (eos is not None))
    out = []
    for r in rows:
        texts = data.item_texts(r["candidates"])
        prefix, cands = view.prepare(Query(r["verbalization"], texts, r["candidates"]))
        target = cands[r["label"]] + ([eos] if eos is not None else [])
        out.append({"input_ids": prefix + target, "completion_mask": [0] * len(prefix) + [1] * len(target),
                    "example_id": r["example_id"], "target": texts[r["label"]]})
    return out


def build_grpo_rows(data, rows: list[dict], view, max_completion: int) -> list[dict]:
    """Conversational prompts (the scorer's messages, fitted the same way, ``max_completion`` tokens
    reserved) + what the reward reads: the target's text and the candidates' (``answer=label``: the
    target's label and the labels, in listed order)."""
    import copy

    from minivz.reason.base import Query
    from minivz.prompt import candidate_labels, fit_context

    view = copy.copy(view)
    view.max_length -= max_completion
    out = []
    for r in rows:
        texts = data.item_texts(r["candidates"])
        q = Query(r["verbalization"], texts, r["candidates"])
        context, _ = fit_context(q.context, lambda c: len(view.tokenize_prompt(c, q)) <= view.max_length)
        if view.answer == "label":
            order, _, _ = view.listing(q)
            labels = candidate_labels(len(order))
            target, cands = labels[order.index(r["label"])], labels
        else:
            target, cands = texts[r["label"]], texts
        out.append({"prompt": view.messages(context, q), "target": target, "candidates": cands,
                    "answer": view.answer, "example_id": r["example_id"]})
    return out


def _norm_title(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s()]", " ", s.lower())).strip()


def named_candidate(reply: str, candidates: list[str]) -> int:
    """Index of the candidate a generated reply names (exact, else the longest candidate the reply
    starts with, else the longest one it contains); -1 when none."""
    r = _norm_title(reply)
    norm = [_norm_title(c) for c in candidates]
    for test in (lambda c: r == c, lambda c: r.startswith(c), lambda c: c in r):
        hits = [(len(c), i) for i, c in enumerate(norm) if c and test(c)]
        if hits:
            return max(hits)[1]
    return -1


def accuracy_reward(completions, target, candidates, answer=None, **kwargs) -> list[float]:
    """TRL reward, the paper's stage-2 reward: +1 when the reply names the target candidate (its title,
    or with ``answer=label`` its label), else -1. GRPO normalizes it within each group."""
    from minivz.reason.openai import parse_answer

    out = []
    for i, (comp, tgt, cands) in enumerate(zip(completions, target, candidates)):
        text = comp[-1]["content"] if isinstance(comp, list) else str(comp)
        k = parse_answer(text, cands) if answer is not None and answer[i] == "label" else named_candidate(text, cands)
        out.append(1.0 if k >= 0 and cands[k] == tgt else -1.0)
    return out


# -- run directory helpers -------------------------------------------------------------------------------


def _truncate_metrics(path: Path, stage: str, max_step: int) -> None:
    """Drop this stage's lines past ``max_step`` (a resumed run redoes those steps) and any later stage
    (the main process only: under a launch it alone writes the run directory)."""
    if not is_main_process():
        return

    def keep(rec: dict) -> bool:
        if rec.get("stage") == "sft":
            return stage == "grpo" or rec["step"] <= max_step
        return rec.get("stage") == "grpo" and stage == "grpo" and rec["step"] <= max_step

    truncate_jsonl(path, keep)


# -- model --------------------------------------------------------------------------------------------


def base_model_source(cfg) -> str:
    """HF dir or hub id of the base reasoner (a GGUF is converted once and cached)."""
    from minivz.models import model_source

    return model_source(cfg.reasoner_model, cfg.reasoner_gguf)


def load_reasoner_model(cfg, source: str):
    """(PeftModel with trainable LoRA on the attention + MLP projections, tokenizer); float32 on CPU,
    bf16 on a GPU, NF4 base weights with ``reasoner_load_in_4bit`` (a Qwen3-8B reasoner on 24 GB)."""
    from minivz.models import load_lora_model

    return load_lora_model(source, load_in_4bit=cfg.reasoner_load_in_4bit,
                           gradient_checkpointing=cfg.reasoner_gradient_checkpointing, r=cfg.reasoner_lora_r,
                           alpha=cfg.reasoner_lora_alpha, dropout=cfg.reasoner_lora_dropout,
                           layers=cfg.reasoner_lora_layers)


# -- training ---------------------------------------------------------------------------------------


def _label_collator(pad_id: int, lines: bool = False):
    """Left-padded batches of ``build_label_rows`` rows: every prompt ends at the last position, where
    the label is read; positions count from each row's first real token (as ``HFReasoner.label_logits``).
    ``lines``: the batch the ``answer=line`` scorer builds (``hf.line_batch``): the positions of the
    lines' ends, where their scores are read."""
    import torch

    from minivz.reason.hf import left_padded, line_batch

    def collate(rows: list[dict]) -> dict:
        target = torch.tensor([r["target"] for r in rows], dtype=torch.long)
        if lines:
            ids, mask, pos, index, keep = line_batch([r["input_ids"] for r in rows],
                                                     [r["label_ids"] for r in rows], pad_id)
            return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "target": target,
                    "line_index": index, "line_keep": keep}
        ids, mask, pos = left_padded([r["input_ids"] for r in rows], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "target": target,
                "label_ids": torch.tensor([r["label_ids"] for r in rows], dtype=torch.long)}

    return collate


def _listwise_trainer_class(readout: int | None = None):
    """transformers' Trainer with the listwise loss (defined on first use: transformers is lazy);
    ``readout``: the ``answer=line`` token, read at each candidate line's end (``hf.line_scores``)."""
    import torch
    from transformers import Trainer

    from minivz.reason.hf import line_scores

    class ListwiseTrainer(Trainer):
        """Softmax over the C candidates' label logits at the answer position, cross-entropy with the
        true item's label (LlamaRec's ranking objective; S-DPO's softmax over negatives, all C at once).
        It raises the true label AND pushes the other candidates down, as the evaluation compares them;
        one forward per prompt, the LM head on the last position only (no (L, vocab) logits)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target = inputs.pop("target")
            if "line_index" in inputs:  # answer=line: C scores read along the list, one forward
                index, keep = inputs.pop("line_index"), inputs.pop("line_keep")
                out = model(**inputs, logits_to_keep=keep)
                logits = line_scores(out.logits, index, readout)  # (B, C)
            else:
                label_ids = inputs.pop("label_ids")
                out = model(**inputs, logits_to_keep=1)
                logits = out.logits[:, -1].float().gather(1, label_ids)  # (B, C)
            loss = torch.nn.functional.cross_entropy(logits, target)
            return (loss, out) if return_outputs else loss

    return ListwiseTrainer


def group_advantages(choices, target, eps: float = 1e-4):
    """GRPO's advantages for G sampled choices per prompt: reward +1 for the true item, -1 otherwise,
    minus the group mean, over the group std (TRL's ``scale_rewards="group"``, unbiased std, +eps).
    ``choices`` (B, G) candidate indices, ``target`` (B,). Returns (rewards, advantages), both (B, G)."""
    import torch

    rewards = torch.where(choices == target[:, None], 1.0, -1.0)
    adv = (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + eps)
    return rewards, adv


def _line_grpo_trainer_class(readout: int, num_generations: int, seed: int):
    """transformers' Trainer running the paper's stage-2 GRPO on the ``answer=line`` reader: its policy
    is the softmax over the C candidates' line scores (what ``minivz eval`` ranks), one action per
    completion. Each prompt's forward gives the C scores; G choices are sampled from them, rewarded
    +1 / -1, group-normalized; the loss is -mean(A * log pi(choice)). One update per sample (on-policy,
    TRL's default num_iterations=1), so the importance ratio is 1 and clipping never binds; beta=0
    (no KL term, TRL's default). G samples cost no extra forward: one reply is one candidate."""
    import torch
    from transformers import Trainer

    from minivz.reason.hf import line_scores

    class LineGRPOTrainer(Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._stats: list[tuple[float, float]] = []  # (mean reward, all-equal group) per micro-batch
            self._draw = (-1, 0)  # (global step, micro-batch within it): what seeds the samples

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            target = inputs.pop("target")
            index, keep = inputs.pop("line_index"), inputs.pop("line_keep")
            out = model(**inputs, logits_to_keep=keep)
            logp = torch.log_softmax(line_scores(out.logits, index, readout), dim=-1)  # (B, C), temperature 1
            # the samples depend on the seed and the step only: a resumed run draws what it would have
            step = self.state.global_step
            self._draw = (step, self._draw[1] + 1 if self._draw[0] == step else 0)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + self._draw[1])
            probs = logp.detach().exp().cpu().nan_to_num(0.0)
            choices = torch.multinomial(probs, num_generations, replacement=True, generator=gen).to(logp.device)
            rewards, adv = group_advantages(choices, target)
            loss = -(adv * logp.gather(1, choices)).mean()
            self._stats.append((float(rewards.mean()), float((rewards.std(dim=1) == 0).float().mean())))
            return (loss, out) if return_outputs else loss

        def log(self, logs: dict, *args, **kwargs) -> None:
            if self._stats and "loss" in logs:  # TRL's names: reward, frac_reward_zero_std
                logs["reward"] = round(float(np.mean([r for r, _ in self._stats])), 4)
                logs["frac_reward_zero_std"] = round(float(np.mean([z for _, z in self._stats])), 4)
                self._stats.clear()
            super().log(logs, *args, **kwargs)

    return LineGRPOTrainer


def _listwise_data(rows: list[dict], tokenizer, lines: bool):
    """(Dataset, collator) of ``build_label_rows`` rows for the listwise trainers (SFT and line GRPO)."""
    from datasets import Dataset

    dataset = Dataset.from_list([{k: r[k] for k in ("input_ids", "target", "label_ids")} for r in rows])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return dataset, _label_collator(pad, lines=lines)


def _grpo_start(run: Path, resume: bool) -> tuple[Path, Path | None]:
    """RUN/grpo/checkpoints and the checkpoint GRPO resumes from; metrics past it are dropped."""
    ckpt_dir = run / "grpo" / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    step, ckpt = resume_step(ckpt_dir, resume)
    _truncate_metrics(run / "metrics.jsonl", "grpo", step)
    return ckpt_dir, ckpt


def check_line_grpo_settings(cfg) -> None:
    """The answer=line GRPO builds transformers' TrainingArguments, not GRPOConfig: a GRPOConfig-only
    ``reasoner_grpo_*`` setting would be silently ignored, so it is refused (before any training)."""
    import dataclasses

    from transformers import TrainingArguments

    from minivz.config import ConfigError

    prefix = "reasoner_grpo_"
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    ignored = [k for k in cfg.reasoner_trl_extra if k.startswith(prefix) and k[len(prefix):] not in fields]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)}: GRPOConfig settings that the answer=line GRPO does not read (its "
                          "reply is one sampled candidate: no generation, beta=0, one iteration); remove them")


def _line_grpo(cfg, run: Path, model, tokenizer, rows: list[dict], resume: bool, progress: bool,
               readout: int) -> dict:
    """GRPO (``_line_grpo_trainer_class``) from the listwise warm start, on the same label rows:
    ``reasoner_grpo_max_steps`` steps of ``reasoner_per_device_train_batch_size`` prompts, each with
    ``reasoner_grpo_num_generations`` sampled choices, at ``reasoner_grpo_learning_rate``."""
    import torch
    from transformers import TrainingArguments

    from minivz.envinfo import fast_bf16

    ckpt_dir, ckpt = _grpo_start(run, resume)
    args = trl_args(
        TrainingArguments, cfg, "reasoner_grpo_",
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=cfg.reasoner_per_device_train_batch_size,
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=cfg.reasoner_save_steps,
        save_total_limit=None,
        logging_steps=cfg.reasoner_logging_steps,
        bf16=fast_bf16(),
        gradient_checkpointing=cfg.reasoner_gradient_checkpointing,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed + 1,  # a new shuffle of the training rows, not the SFT epoch's order again
        data_seed=cfg.seed + 1,
        report_to=cfg.reasoner_report_to,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    write_trl_args(run / "grpo" / "trl_args.json", args)
    dataset, collator = _listwise_data(rows, tokenizer, lines=True)
    trainer = _line_grpo_trainer_class(readout, cfg.reasoner_grpo_num_generations, cfg.seed)(
        model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=tokenizer)
    return _train_stage(trainer, "grpo", cfg, run, ckpt_dir, ckpt, cfg.reasoner_grpo_max_steps, progress)


def _sft(cfg, run: Path, model, tokenizer, rows: list[dict], resume: bool, progress: bool,
         listwise: bool = False, readout: int | None = None) -> dict:
    """SFT on the target's title (TRL's SFTTrainer, loss on the completion) or, ``listwise``, the
    listwise loss on the labels of the listed candidates (``ListwiseTrainer``; ``readout``: scored at
    each candidate's line instead, answer=line); same arguments."""
    import torch

    from minivz.envinfo import fast_bf16
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ckpt_dir = run / "checkpoints"
    step, ckpt = resume_step(ckpt_dir, resume)
    if ckpt is None:
        if is_main_process():
            (run / "metrics.jsonl").unlink(missing_ok=True)
    else:
        _truncate_metrics(run / "metrics.jsonl", "sft", step)
        print(f"resuming SFT from {ckpt}", file=sys.stderr)
    on_gpu = torch.cuda.is_available()
    # reasoner_<f> for each SFTConfig field <f> (epochs, learning rate, batch, warmup, logging/save
    # steps, gradient checkpointing), by name
    args = trl_args(
        SFTConfig, cfg, "reasoner_",
        output_dir=str(ckpt_dir),
        max_steps=cfg.reasoner_max_steps or -1,  # 0 = train reasoner_num_train_epochs
        lr_scheduler_type="cosine",
        completion_only_loss=True,  # loss on the target's tokens only (completion_mask)
        max_length=None,  # build_sft_rows already fitted every row; TRL's keep_start would cut the target
        save_strategy="steps",
        save_total_limit=None,  # StepCheckpoints rotates step_* dirs
        bf16=fast_bf16(),  # autocast: a bf16 GPU, or a CPU with AMX/AVX512-BF16 (fp32 master weights)
        use_cpu=not on_gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=not listwise,  # the listwise loss reads target and label_ids
    )
    write_trl_args(run / "trl_args.json", args)
    if listwise:
        dataset, collator = _listwise_data(rows, tokenizer, lines=readout is not None)
        trainer = _listwise_trainer_class(readout)(model=model, args=args, train_dataset=dataset,
                                                   data_collator=collator, processing_class=tokenizer)
    else:
        dataset = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["completion_mask"]}
                                     for r in rows])
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    return _train_stage(trainer, "sft", cfg, run, ckpt_dir, ckpt, cfg.reasoner_max_steps, progress)


def _train_stage(trainer, stage: str, cfg, run: Path, ckpt_dir: Path, ckpt: Path | None, max_steps: int,
                 progress: bool) -> dict:
    """Run one stage's trainer from ``ckpt`` (or load a checkpoint that already holds the whole stage);
    metrics go to RUN/metrics.jsonl tagged with ``stage``, checkpoints to ``ckpt_dir/step_*``."""
    from transformers import PrinterCallback

    from minivz.train.callbacks import MetricsLogger
    from minivz.train.policy import load_adapter

    trainer.add_callback(MetricsLogger(run / "metrics.jsonl", stage, progress))
    trainer.add_callback(step_checkpoints_callback(ckpt_dir, cfg.reasoner_save_total_limit, save_last=True))
    trainer.remove_callback(PrinterCallback)
    t0 = time.perf_counter()
    if ckpt is not None and checkpoint_finished(ckpt, max_steps):
        # Trainer.train would take one more step before noticing it is done: load the adapter instead
        load_adapter(trainer.model, ckpt)
        steps = json.loads((ckpt / "trainer_state.json").read_text())["global_step"]
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        steps = trainer.state.global_step
    return {f"{stage}_steps": int(steps), f"{stage}_seconds": round(time.perf_counter() - t0, 1),
            f"{stage}_resumed_from": str(ckpt) if ckpt else None, "model": trainer.model}


def _grpo(cfg, run: Path, model, tokenizer, rows: list[dict], resume: bool, progress: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    ckpt_dir, ckpt = _grpo_start(run, resume)
    on_gpu = torch.cuda.is_available()
    g = cfg.reasoner_grpo_num_generations
    # reasoner_grpo_<f> for each GRPOConfig field <f> (max_steps, num_generations, learning_rate,
    # max_completion_length), by name; logging/save steps and checkpointing as in the SFT stage
    args = trl_args(
        GRPOConfig, cfg, "reasoner_grpo_",
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=g,  # one prompt's group per step
        beta=0.0,
        temperature=1.0,
        scale_rewards="group",
        save_strategy="steps",
        save_steps=cfg.reasoner_save_steps,
        save_total_limit=None,
        logging_steps=cfg.reasoner_logging_steps,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=cfg.reasoner_gradient_checkpointing,
        chat_template_kwargs={"enable_thinking": False},  # the answer is a title, not a <think> block
        use_cpu=not on_gpu,
        seed=cfg.seed,
        report_to=cfg.reasoner_report_to,  # one setting for the reasoner's SFT and GRPO
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
    )
    write_trl_args(run / "grpo" / "trl_args.json", args)
    trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer)
    return _train_stage(trainer, "grpo", cfg, run, ckpt_dir, ckpt, cfg.reasoner_grpo_max_steps, progress)


def self_evaluate(cfg, data_dir: str | Path, run: Path, merged: str, base: str | None,
                  verbalizer_spec: str) -> dict:
    """Evaluate the merged reasoner (and the untrained base, popularity and item-kNN as bars) on the
    first ``reasoner_eval_limit`` examples of ``reasoner_eval_split`` through minivz.evaluate."""
    from minivz.config import EvalConfig
    from minivz.evaluate import evaluate

    scoring = ",dtype=auto" + scoring_options(cfg)  # read the way it was trained
    reasoners = {"trained": f"hf:model={merged}{scoring}"}
    if base is not None:
        reasoners["base"] = f"hf:model={base}{scoring}"
    reasoners.update({"popularity": "popularity", "knn": "knn"})
    out = {}
    for name, spec in reasoners.items():
        ec = EvalConfig(data=str(data_dir), verbalizer=verbalizer_spec, reasoner=spec, eval_split=cfg.reasoner_eval_split,
                        limit=cfg.reasoner_eval_limit, eval_history=cfg.reasoner_history,
                        out=str(run / "eval" / name), seed=cfg.seed)
        t0 = time.perf_counter()
        m = evaluate(ec)
        out[name] = {sub: {k: m[sub][k] for k in ("n", "recall@1", "recall@1_ci", "recall@5", "ndcg@10", "mrr")}
                     for sub in ("all", "discovery") if m.get(sub) and m[sub].get("n")}
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def train_reasoner(cfg, data_dir: str | Path, out: str | Path, *, resume: bool = True, progress: bool = True,
                   evaluate_base: bool = True) -> dict:
    """Verbalize (cached) -> SFT (-> GRPO) -> RUN/final + RUN/final/merged -> self-evaluation.

    Returns a summary dict, also written to RUN/summary.json.
    """
    import torch

    from minivz.dataset import PreparedData
    from minivz.train.policy import check_versions, final_paths, save_final

    check_versions("peft")
    run = Path(out)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    record_run_config(run, cfg, data_dir, resume)
    write_env(run, train_backend="peft", torch_device="cuda" if torch.cuda.is_available() else "cpu")
    resumable_on_cpu_ranks()  # SFT and GRPO resume from checkpoints in every process of a CPU launch
    torch.manual_seed(cfg.seed)

    data = PreparedData.load(data_dir)
    t0 = time.perf_counter()
    rows = verbalize_split(data, cfg.reasoner_verbalizer, "train", cfg.reasoner_train_examples, cfg.reasoner_history,
                           run / "verbalized" / "train.jsonl", seed=cfg.seed, progress=progress)
    rows = [r for r in rows if r["n_events"] > 0]
    if not rows:
        raise ValueError(f"{data_dir}: no train examples with a history; check `minivz data prepare`")
    verbalize_seconds = time.perf_counter() - t0

    base = base_model_source(cfg)
    model, tokenizer = load_reasoner_model(cfg, base)
    view = scoring_view(tokenizer, cfg, cfg.reasoner_max_length, item_stats_for(data))
    listwise = view.answer in ("label", "line")
    if view.answer == "line" and cfg.reasoner_grpo_max_steps > 0:
        check_line_grpo_settings(cfg)  # before the SFT, not after it
    if listwise:
        sft_rows = build_label_rows(data, rows, view)
    else:
        sft_rows = build_sft_rows(data, rows, tokenizer, view.template.name, cfg.reasoner_max_length)
    lengths = [len(r["input_ids"]) for r in sft_rows]
    sft = _sft(cfg, run, model, tokenizer, sft_rows, resume, progress, listwise=listwise,
               readout=view.readout_token_id() if view.answer == "line" else None)
    model = sft.pop("model")
    summary: dict[str, Any] = {"run": str(run), "base": base, "verbalizer": cfg.reasoner_verbalizer,
                               "objective": "listwise" if listwise else "sft", "scoring": cfg.reasoner_scoring,
                               "train_examples": len(rows), "verbalize_seconds": round(verbalize_seconds, 1),
                               "tokens_per_example_mean": round(float(np.mean(lengths)), 1),
                               "tokens_per_example_max": int(max(lengths)), **sft}
    if cfg.reasoner_grpo_max_steps > 0:
        if view.answer == "line":  # one action per reply: a candidate
            grpo = _line_grpo(cfg, run, model, tokenizer, sft_rows, resume, progress, view.readout_token_id())
        else:
            grpo_rows = build_grpo_rows(data, rows, view, cfg.reasoner_grpo_max_completion_length)
            grpo = _grpo(cfg, run, model, tokenizer, grpo_rows, resume, progress)
        model = grpo.pop("model")
        summary.update(grpo)
    # under a launch (N processes) rank 0 writes the final adapter, the merged model, the
    # self-evaluation and the summary; the others trained their share and are done once it has saved
    summary.update(save_final(model, tokenizer, run / "final", "peft") if is_main_process()
                   else final_paths(run / "final"))
    del model
    leave_launch()
    if not is_main_process():
        return summary

    if cfg.reasoner_eval_limit > 0:
        spec = cfg.reasoner_verbalizer
        if spec.split(":")[0] != "template":  # reuse the frozen verbalizer's text from the cache
            path = run / "verbalized" / f"{cfg.reasoner_eval_split}.jsonl"
            verbalize_split(data, spec, cfg.reasoner_eval_split, cfg.reasoner_eval_limit, cfg.reasoner_history,
                            path, seed=cfg.seed, progress=progress)
            spec = f"{CACHE_VERBALIZER}:path={path}"
        summary["eval"] = self_evaluate(cfg, data_dir, run, summary["merged"], base if evaluate_base else None, spec)
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
