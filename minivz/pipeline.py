"""``minivz recipe NAME``: the paper's two-stage method end to end, one stage per step.

    minivz recipe tiny-cpu --out runs/tiny-cpu          # run (or resume) everything
    minivz recipe tiny-cpu --dry-run                    # the plan, resolved config, hardware per stage

Stages, each writing into one run directory and skipped when already complete (its
``stages/<name>.json`` marker exists), so a rerun resumes where a kill stopped it:

    data        log -> examples                                      RUN/data
    baselines   the headroom check on VALID users (template and the  RUN/headroom/
                rule verbalizers under the frozen oracle; the best
                rule is chosen there), then on TEST users: template,  RUN/eval/<row>
                the chosen rule, the LLM baselines (zero-shot, the
                untrained policy), popularity and item-kNN
    verbalizer  GRPO training of the verbalizer policy                RUN/verbalizer
    learned     the trained verbalizer under the same oracle, on the  RUN/eval/learned
                same test users as the template
    reasoner    stage 2, all on the same test users: the template     RUN/eval/base-template
                read by the UNTRAINED base reasoner (the paper's
                reference), the reasoner trained on template text     RUN/reasoner-template
                ("reasoner only") and on the learned verbalizer's     RUN/reasoner-learned
                text ("two-stage")                                     RUN/eval/reasoner-*
    export      GGUF of the trained verbalizer and reasoner           RUN/export/
    table       the final tables: JSON, Markdown, PNG, and the HTML      RUN/results.{json,md,png}
                report (tables, plots, what each reader saw)           RUN/report.html

Stage 1 rows are compared with the template under the oracle; stage 2 rows with the template read
by the untrained reasoner -- the baselines the paper's relative numbers use.
"""

from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Callable

from minivz.config import (STAGES, ConfigError, DataConfig, EvalConfig, PipelineConfig, ReasonerTrainConfig,
                           VerbalizerTrainConfig, dump_yaml, load_recipe, packaged_path, resolve)
from minivz.install import pip
from minivz.report import cell
from minivz.spec import parse_spec


# The paper's relative gains over its baselines (Qwen3-8B, Discovery Recall@1), printed beside ours.
PAPER_GAINS = {"zero-shot": 0.053, "action": 0.107, "rewrite": 0.125, "reasoner-only": 0.428, "two-stage": 0.929}


def _configs(recipe: str, overrides: list[str] | None):
    return {
        "data": resolve(DataConfig, recipe, overrides),
        "eval": resolve(EvalConfig, recipe, overrides),
        "verbalizer": resolve(VerbalizerTrainConfig, recipe, overrides),
        "reasoner": resolve(ReasonerTrainConfig, recipe, overrides),
        "pipeline": resolve(PipelineConfig, recipe, overrides),
    }


STAGE_HARDWARE = {
    "cpu": {s: "CPU (2 cores are enough)" for s in STAGES},
    "gpu": {"data": "CPU", "baselines": "1 GPU (the oracle: co-located base model, or its HTTP endpoint)",
            "verbalizer": "1 GPU (4-bit LoRA policy + the co-located frozen oracle; plan below)",
            "learned": "1 GPU", "reasoner": "1 GPU (4-bit LoRA reasoner: SFT, then GRPO)",
            "export": "CPU, RAM >= 2x model size", "table": "CPU"},
    "multi-gpu": {"data": "CPU", "baselines": "CPU + the oracle endpoint",
                  "verbalizer": "N GPUs: accelerate + DeepSpeed ZeRO-3, vLLM rollouts",
                  "learned": "GPUs (vLLM)", "reasoner": "N GPUs: accelerate + DeepSpeed ZeRO-3",
                  "export": "CPU, RAM >= 2x model size", "table": "CPU"},
}


def plan(recipe: str, overrides: list[str] | None = None) -> dict:
    """The resolved configs and the stage list, without running anything (``--dry-run``)."""
    cfgs = _configs(recipe, overrides)
    meta = load_recipe(recipe)
    hw = STAGE_HARDWARE[cfgs["pipeline"].hardware]
    return {
        "recipe": recipe,
        "description": meta.get("description", ""),
        "stages": [{"stage": s, "hardware": hw[s], "skipped": s in cfgs["pipeline"].skip_stages} for s in STAGES],
        "configs": cfgs,
    }


class Pipeline:
    def __init__(self, recipe: str, out: str | Path, overrides: list[str] | None = None,
                 say: Callable[[str], None] | None = None):
        self.recipe = recipe
        self.out = Path(out)
        self.overrides = overrides or []
        self.cfg = _configs(recipe, overrides)
        self.say = say or print

    # -- bookkeeping ------------------------------------------------------------------------
    def _marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def _done(self, stage: str) -> bool:
        return self._marker(stage).exists()

    def _finish(self, stage: str, info: dict) -> None:
        self._marker(stage).parent.mkdir(parents=True, exist_ok=True)
        self._marker(stage).write_text(json.dumps(info, indent=2, default=str))

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def _eval(self, row: str, verbalizer: str, reasoner: str, limit: int, history: int | None = None) -> Path:
        """One ``minivz eval`` run on the first ``limit`` test examples (resumable, skipped when done)."""
        from minivz.evaluate import evaluate

        out = self.out / "eval" / row
        if not (out / "metrics.json").exists() or not (out / "done").exists():
            ev = self.cfg["eval"]
            cfg = EvalConfig(data=str(self.data_dir), verbalizer=verbalizer, reasoner=reasoner,
                             eval_split="test", limit=limit, eval_history=history or ev.eval_history,
                             batch_size=ev.batch_size, n_boot=ev.n_boot, out=str(out), seed=ev.seed)
            t0 = time.perf_counter()
            m = evaluate(cfg)
            (out / "done").write_text(f"{time.perf_counter() - t0:.1f}\n")
            self.say(f"  {row}: all R@1 {m['all']['recall@1']:.3f} (n={m['all']['n']})")
        return out

    @cached_property
    def oracle(self) -> str:
        """The spec every stage-1 row is scored with (``policy`` -> ``hf:`` on the base model)."""
        from minivz.train.policy import eval_oracle

        return eval_oracle(self.cfg["verbalizer"])

    @property
    def best_rule(self) -> str:
        """The rule the headroom check chose on valid users (stage baselines)."""
        path = self.out / "headroom" / "headroom.json"
        if not path.is_file():
            raise RuntimeError(f"{path} is missing: run the baselines stage first")
        return json.loads(path.read_text())["best"]

    # -- stages -----------------------------------------------------------------------------
    def stage_data(self) -> dict:
        from minivz.examples import prepare

        s = prepare(self.cfg["data"], self.data_dir)
        return s.to_json()

    def stage_baselines(self) -> dict:
        from minivz.headroom import headroom

        p, ev = self.cfg["pipeline"], self.cfg["eval"]
        # choose the rule on VALID users: the test split is only reported, never tuned on
        report = headroom(self.data_dir, self.oracle, self.out / "headroom", split="valid", limit=p.headroom_limit,
                          history=ev.eval_history, rules=p.headroom_rules, n_boot=ev.n_boot, seed=ev.seed,
                          say=self.say)
        rows = {"template": self._eval("template", "template", self.oracle, p.eval_limit),
                "best-rule": self._eval("best-rule", report["best"], self.oracle, p.eval_limit)}
        for name in ("popularity", "knn"):
            rows[name] = self._eval(name, "template", name, p.eval_limit)
        for spec in p.baseline_verbalizers:
            row, _ = parse_spec(spec)  # "zero-shot:max_new_tokens=64" is the zero-shot row
            rows[row] = self._eval(row, spec, self.oracle, p.llm_eval_limit)
        if p.policy_step0_row:
            rows["policy-step0"] = self._eval("policy-step0", self.policy_spec(None), self.oracle, p.llm_eval_limit)
        return {"rows": sorted(rows), "best_rule": report["best"], "headroom": str(self.out / "headroom")}

    def launch_command(self, verb: str, out: Path, extra: list[str] | None = None) -> list[str]:
        """``accelerate launch`` argv for a training stage on a multi-GPU node (DeepSpeed ZeRO-3
        from the recipe's accelerate_config); the same minivz command runs in every process."""
        p = self.cfg["pipeline"]
        if not p.accelerate_config:
            raise ConfigError("hardware=multi-gpu needs accelerate_config (e.g. recipes/accelerate/zero3.yaml)")
        argv = ["accelerate", "launch", "--config_file", packaged_path(p.accelerate_config), "--num_processes",
                str(p.num_processes), "-m", "minivz", "train", verb, "--recipe", self.recipe,
                "--data", str(self.data_dir), "--out", str(out)]
        for o in self.overrides + (extra or []):
            argv += ["--set", o]
        return argv

    def _launch(self, argv: list[str]) -> dict:
        import shutil
        import subprocess

        if shutil.which(argv[0]) is None:
            raise ImportError(f"multi-GPU stages run through accelerate: {pip('accelerate', 'deepspeed')}")
        self.say("  $ " + " ".join(argv))
        subprocess.run(argv, check=True)
        return {"launched": argv}

    def stage_verbalizer(self) -> dict:
        out = self.out / "verbalizer"
        if self.cfg["pipeline"].hardware == "multi-gpu":
            return self._launch(self.launch_command("verbalizer", out))
        from minivz.train.grpo import train_verbalizer

        return train_verbalizer(self.cfg["verbalizer"], self.data_dir, out)

    def policy_spec(self, model: str | Path | None) -> str:
        """The verbalizer spec of the policy as trained: ``model=None`` is the untrained base policy,
        else a merged model dir (see ``verbalizer_spec``)."""
        v = self.cfg["verbalizer"]
        if model is None:
            from minivz.train.policy import policy_source

            model = policy_source(v)
        return verbalizer_spec(v, model)

    @property
    def learned_spec(self) -> str:
        return self.policy_spec(self.out / "verbalizer" / "final" / "merged")

    def learned_texts(self, limit: int, history: int) -> str:
        """Generate (or resume) the trained verbalizer's text for the first ``limit`` test examples
        into RUN/verbalized/learned-test-h<history>.jsonl, once for every row that reads it;
        returns the ``cached`` verbalizer spec that serves it."""
        from minivz.dataset import PreparedData
        from minivz.verbalize.cache import verbalize_split

        path = self.out / "verbalized" / f"learned-test-h{history}.jsonl"
        verbalize_split(PreparedData.load(self.data_dir), self.learned_spec, "test", limit, history, path)
        return f"cached:path={path}"

    def stage_learned(self) -> dict:
        p, ev = self.cfg["pipeline"], self.cfg["eval"]
        self._eval("learned", self.learned_texts(p.eval_limit, ev.eval_history), self.oracle, p.eval_limit)
        return {"row": "learned", "verbalizer": self.learned_spec}

    def stage_reasoner(self) -> dict:
        import dataclasses

        from minivz.train.reasoner import base_model_source, scoring_options, train_reasoner

        p, rc = self.cfg["pipeline"], self.cfg["reasoner"]
        h = rc.reasoner_history
        info: dict = {}
        # the paper's reference: the template read by the untrained base reasoner, through the same
        # interface (reasoner_scoring: the candidate list, the label read) as the trained rows
        dt = f",dtype={p.stage2_dtype}" + scoring_options(rc)
        self._eval("base-template", "template", f"hf:model={base_model_source(rc)}{dt}", p.stage2_limit, h)
        for spec in p.stage2_baselines:
            self._eval(f"stage2-{parse_spec(spec)[0]}", "template", spec, p.stage2_limit, h)
        for row, verb in (("reasoner-only", "template"), ("two-stage", self.learned_spec)):
            cfg = dataclasses.replace(rc, reasoner_verbalizer=verb)
            run = self.out / f"reasoner-{'template' if verb == 'template' else 'learned'}"
            if p.hardware == "multi-gpu":
                info[row] = self._launch(self.launch_command("reasoner", run, [f"reasoner_verbalizer={verb}"]))
            else:
                info[row] = train_reasoner(cfg, self.data_dir, run)
            # every stage-2 row on the same stage2_limit test examples (paired), the LLM reasoner scoring
            text = "template" if verb == "template" else self.learned_texts(p.stage2_limit, h)
            self._eval(row, text, f"hf:model={run / 'final' / 'merged'}{dt}", p.stage2_limit, h)
        return info

    def stage_export(self) -> dict:
        from minivz.export import export_gguf

        q = self.cfg["pipeline"].export_quant
        return {
            "verbalizer": export_gguf(self.out / "verbalizer" / "final" / "merged", self.out / "export" / "verbalizer", q),
            "reasoner": export_gguf(self.out / "reasoner-learned" / "final" / "merged", self.out / "export" / "reasoner", q),
        }

    def stage_table(self) -> dict:
        from minivz.report import bar_chart, compare_runs, html_report

        if not (self.out / "eval" / "template" / "metrics.json").exists():
            raise RuntimeError("the table needs the template row (stage baselines) as its reference")
        v, rc, ev = self.cfg["verbalizer"], self.cfg["reasoner"], self.cfg["eval"]
        rule = self.best_rule
        zero_shot = [parse_spec(s)[0] for s in self.cfg["pipeline"].baseline_verbalizers]
        labels1 = {"template": "template", "best-rule": f"best rule on valid: {rule}",
                   **{z: f"{z} (untrained LLM)" for z in zero_shot},
                   "policy-step0": f"{v.variant} policy before GRPO (step 0)",
                   "learned": f"{v.variant} policy after GRPO ({v.max_steps} steps)",
                   "popularity": "popularity (ids only)", "knn": "item-kNN (ids only)"}
        labels2 = {"base-template": "template + untrained reasoner", "reasoner-only": "reasoner-only (trained on template)",
                   "two-stage": "two-stage (trained on the learned text)",
                   **{f"stage2-{n}": f"{n} (ids only)" for n in (parse_spec(b)[0] for b in self.cfg["pipeline"].stage2_baselines)}}
        tables = {}
        for key, labels in (("stage1", labels1), ("stage2", labels2)):
            present = [r for r in labels if (self.out / "eval" / r / "metrics.json").exists()]
            if present:
                rows = compare_runs([self.out / "eval" / r for r in present], labels=[labels[r] for r in present])
                for r, name in zip(rows, present):
                    r["row"] = name
                    r["paper_rel"] = PAPER_GAINS.get("rewrite" if name == "learned" and v.variant == "rewrite"
                                                     else "action" if name == "learned" else name)
                tables[key] = rows
        results = {"recipe": self.recipe, "oracle": self.oracle, "best_rule": rule, "variant": v.variant,
                   "eval_history": ev.eval_history, "reasoner_history": rc.reasoner_history,
                   "tie_rule": self.cfg["data"].tie_rule, **tables}
        (self.out / "results.json").write_text(json.dumps(results, indent=2))
        (self.out / "results.md").write_text(results_markdown(results))
        if "stage1" in tables:
            bar_chart(tables["stage1"], self.out / "results.png",
                      title=f"minivz recipe {self.recipe}, stage 1 under `{self.oracle}`: Recall@1 (95% CI)")
        if "stage2" in tables:
            bar_chart(tables["stage2"], self.out / "results-stage2.png",
                      title=f"minivz recipe {self.recipe}, stage 2 (LLM reasoner): Recall@1 (95% CI)")
        html_report(self.out)  # RUN/report.html: the tables, plots and what each reader saw
        return {"rows": {k: [r["row"] for r in t] for k, t in tables.items()}}

    def pending(self) -> list[str]:
        """The stages still to run (neither complete nor in ``skip_stages``)."""
        return [s for s in STAGES if s not in self.cfg["pipeline"].skip_stages and not self._done(s)]

    def run(self, until: str | None = None, after: str | None = None) -> list[dict]:
        """Run every stage not yet complete (up to and including ``until``; only those past ``after``,
        which the caller has run or checked already); returns those that ran."""
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.yaml").write_text(
            "\n".join(f"# {k}\n{dump_yaml(v)}" for k, v in self.cfg.items()))
        report = []
        stages = STAGES if until is None else STAGES[:STAGES.index(until) + 1]
        if after is not None:
            stages = stages[STAGES.index(after) + 1:]
        for stage in stages:
            if stage in self.cfg["pipeline"].skip_stages:
                self.say(f"[skip] {stage} (skip_stages)")
                continue
            if self._done(stage):
                self.say(f"[done] {stage} (already complete: {self._marker(stage)})")
                continue
            self.say(f"[run ] {stage}")
            t0 = time.perf_counter()
            info = getattr(self, f"stage_{stage}")()
            secs = time.perf_counter() - t0
            self._finish(stage, {"seconds": round(secs, 1), "info": info})
            report.append({"stage": stage, "seconds": round(secs, 1)})
            self.say(f"       {stage} finished in {secs:.1f} s")
        return report


def _vs(row: dict, sub: str) -> str:
    """Paired difference vs the table's first row, the relative change in brackets."""
    out = cell(row, f"{sub}_diff", "diff")
    if out != "—" and row.get(f"{sub}_rel") is not None:
        out += f" ({cell(row, f'{sub}_rel', 'pct')})"
    return out


def results_markdown(results: dict) -> str:
    """The recipe's two tables: stage 1 vs the template under the oracle, stage 2 vs the template read
    by the untrained reasoner; paired differences (absolute, and relative in brackets) with 95% CIs."""
    parts = [f"# minivz recipe {results['recipe']}\n"]
    head = ("| system | n | Discovery R@1 [95% CI] | vs {base}, paired (relative) | All R@1 [95% CI] | "
            "vs {base}, paired (relative) | paper, relative |")
    for key, base, title in (("stage1", "template", f"Stage 1: verbalizers under the frozen oracle `{results['oracle']}` "
                              f"({results['eval_history']}-event histories)"),
                             ("stage2", "row 1", f"Stage 2: an LLM reasoner reads the text "
                              f"({results['reasoner_history']}-event histories)")):
        rows = results.get(key)
        if not rows:
            continue
        parts.append(f"## {title}\n")
        parts.append(head.format(base=base))
        parts.append("|---|---|---|---|---|---|---|")
        for r in rows:
            paper = f"{r['paper_rel']:+.1%}" if r.get("paper_rel") is not None else ""
            parts.append(f"| {r['label']} | {r['n']} | {cell(r, 'discovery_recall@1')} | {_vs(r, 'discovery')} | "
                         f"{cell(r, 'all_recall@1')} | {_vs(r, 'all')} | {paper} |")
        floor = rows[0].get("random_recall@1")
        parts.append(f"\nRandom floor Recall@1 = {floor:.3f}. Paired on the examples both rows scored (n of "
                     "the smaller row)." if floor is not None else "")
        parts.append("")
    parts.append(f"The rule was chosen on valid users by `minivz headroom` (RUN/headroom/headroom.md); every row "
                 f"above is on test users. Ties: `{results['tie_rule']}`. Discovery: the user never interacted "
                 "with the target's title before (an episode's title is its series).\n")
    return "\n".join(parts)


def list_recipes() -> list[tuple[str, str]]:
    from minivz.config import RECIPES_DIR

    out = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        out.append((p.stem, load_recipe(str(p)).get("description", "")))
    return out


def verbalizer_spec(v, model: str | Path | None = None, *, adapter: str | Path | None = None,
                    sampled: bool = False) -> str:
    """The one spec of a trained policy, wherever it is read (the learned row, the held-out curve,
    ``serve --run``): its variant, render and completion budget from its ``VerbalizerTrainConfig``,
    greedy. A merged HF dir reads with ``backend=hf``, an exported GGUF with ``backend=llama``;
    ``adapter=`` a LoRA checkpoint on its base (the curve); ``sampled`` decodes at the run's
    training temperature with its seed instead of greedily."""
    if (model is None) == (adapter is None):
        raise ValueError("verbalizer_spec: pass the policy's model or one of its adapters, not both")
    if adapter is not None:
        source = f"adapter={adapter},backend=hf"
    else:
        source = f"model={model},backend={'llama' if str(model).endswith('.gguf') else 'hf'}"
    render = f",render={v.select_render}" if v.variant == "select" else ""
    sample = f",temperature={v.temperature},seed={v.seed}" if sampled else ""
    return f"{v.variant}:{source}{render},max_new_tokens={v.max_completion_length}{sample}"


def run_scoring(run: Path) -> str:
    """How a `minivz recipe` run's trained reasoner reads the candidates (its ``reasoner_scoring`` and
    prompt, recorded in RUN/reasoner-learned/config.yaml): the options ``minivz serve --run`` scores with."""
    from minivz.config import ReasonerTrainConfig
    from minivz.rundir import read_run_config
    from minivz.train.reasoner import scoring_options

    return scoring_options(read_run_config(run / "reasoner-learned", ReasonerTrainConfig)).lstrip(",")


def run_models(run: Path) -> tuple[str, str]:
    """(reasoner GGUF, verbalizer spec) of a `minivz recipe` run's export: the verbalizer served the way it
    was trained (``verbalizer_spec`` of the settings recorded in RUN/verbalizer/config.yaml)."""
    from minivz.config import VerbalizerTrainConfig
    from minivz.rundir import read_run_config

    def gguf(kind: str) -> str:
        found = sorted((run / "export" / kind).glob("model-*.gguf"))
        if not found:
            raise FileNotFoundError(f"--run {run}: no {run / 'export' / kind}/model-*.gguf; finish the run "
                                    f"(minivz recipe ... --out {run}) or export it (minivz export)")
        return str(found[0])

    return gguf("reasoner"), verbalizer_spec(read_run_config(run / "verbalizer", VerbalizerTrainConfig),
                                             gguf("verbalizer"))
