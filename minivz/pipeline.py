"""``minivz recipe NAME``: the paper's two-stage method end to end, one stage per step.

    minivz recipe tiny-cpu --out runs/tiny-cpu          # run (or resume) everything
    minivz recipe tiny-cpu --dry-run                    # the plan, resolved config, hardware per stage

Stages, each writing into one run directory and skipped when already complete (its
``stages/<name>.json`` marker exists), so a rerun resumes where a kill stopped it:

    data        log -> examples                                  RUN/data
    baselines   popularity, item-kNN, and the verbalizers         RUN/eval/<row>
                {template, zero-shot, action} under the frozen oracle
    verbalizer  GRPO training of the rewrite verbalizer           RUN/verbalizer
    rewrite     the trained verbalizer under the same oracle      RUN/eval/rewrite
    reasoner    stage 2: SFT of the reasoner on template input    RUN/reasoner-template
                (reasoner only) and on the trained verbalizer's   RUN/reasoner-two-stage
                output (two-stage), each evaluated on test        RUN/eval/reasoner-*
    export      GGUF of the trained verbalizer and reasoner       RUN/export/
    table       the final table: JSON, Markdown, PNG              RUN/results.{json,md,png}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from minivz.config import SECTIONS, ConfigError, DataConfig, EvalConfig, dump_yaml, load_recipe, packaged_path, resolve
from minivz.verbalize import parse_spec


@dataclass
class PipelineConfig:
    """What `minivz recipe` runs beyond each stage's own config."""

    # examples per evaluation row; LLM-generated rows are slow on CPU, so they get their own cap
    eval_limit: int = 0
    llm_eval_limit: int = 200
    baseline_verbalizers: list[str] = field(default_factory=lambda: ["template", "zero-shot", "action"])
    # GGUF quantization of the exported verbalizer and reasoner (stage export)
    export_quant: str = "q8_0"
    skip_stages: list[str] = field(default_factory=list)
    # hardware each stage needs, shown by --dry-run: cpu | gpu | multi-gpu
    hardware: str = "cpu"
    # multi-GPU recipes: accelerate config file (DeepSpeed ZeRO-3) and vLLM rollouts
    accelerate_config: str | None = None
    num_processes: int = 1
    use_vllm: bool = False

    def __post_init__(self) -> None:
        unknown = set(self.skip_stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"skip_stages has unknown stages {sorted(unknown)}; stages: {', '.join(STAGES)}")
        if self.export_quant not in ("f16", "q8_0", "q4_k_m"):
            raise ConfigError(f"export_quant={self.export_quant!r}: use f16, q8_0 or q4_k_m")
        if self.hardware not in ("cpu", "gpu", "multi-gpu"):
            raise ConfigError(f"hardware={self.hardware!r}: use cpu, gpu or multi-gpu")
        if self.eval_limit < 0 or self.llm_eval_limit < 0 or self.num_processes < 1:
            raise ConfigError("eval_limit and llm_eval_limit must be >= 0, num_processes >= 1")


STAGES = ("data", "baselines", "verbalizer", "rewrite", "reasoner", "export", "table")
if PipelineConfig not in SECTIONS:
    SECTIONS.append(PipelineConfig)


def _configs(recipe: str, overrides: list[str] | None):
    from minivz.train.config import VerbalizerTrainConfig
    from minivz.train.reasoner_config import ReasonerTrainConfig

    return {
        "data": resolve(DataConfig, recipe, overrides),
        "eval": resolve(EvalConfig, recipe, overrides),
        "verbalizer": resolve(VerbalizerTrainConfig, recipe, overrides),
        "reasoner": resolve(ReasonerTrainConfig, recipe, overrides),
        "pipeline": resolve(PipelineConfig, recipe, overrides),
    }


STAGE_HARDWARE = {
    "cpu": {s: "CPU (2 cores are enough)" for s in STAGES},
    "gpu": {"data": "CPU", "baselines": "CPU + the oracle endpoint", "verbalizer": "1 GPU, 24 GB (Unsloth 4-bit LoRA)",
            "rewrite": "1 GPU or CPU", "reasoner": "1 GPU, 24 GB", "export": "CPU, RAM >= 2x model size",
            "table": "CPU"},
    "multi-gpu": {"data": "CPU", "baselines": "CPU + the oracle endpoint",
                  "verbalizer": "N GPUs: accelerate + DeepSpeed ZeRO-3, vLLM rollouts",
                  "rewrite": "GPUs (vLLM)", "reasoner": "N GPUs: accelerate + DeepSpeed ZeRO-3",
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
        self.rows: dict[str, Path] = {}

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

    def _eval(self, row: str, verbalizer: str, reasoner: str, limit: int) -> Path:
        from minivz.evaluate import evaluate

        out = self.out / "eval" / row
        if not (out / "metrics.json").exists() or not (out / "done").exists():
            ev = self.cfg["eval"]
            cfg = EvalConfig(data=str(self.data_dir), verbalizer=verbalizer, reasoner=reasoner,
                             eval_split="test", limit=limit, eval_history=ev.eval_history,
                             batch_size=ev.batch_size, n_boot=ev.n_boot, out=str(out), seed=ev.seed)
            t0 = time.perf_counter()
            m = evaluate(cfg)
            (out / "done").write_text(f"{time.perf_counter() - t0:.1f}\n")
            self.say(f"  {row}: all R@1 {m['all']['recall@1']:.3f} (n={m['all']['n']})")
        self.rows[row] = out
        return out

    # -- stages -----------------------------------------------------------------------------
    def stage_data(self) -> dict:
        from minivz.examples import prepare

        s = prepare(self.cfg["data"], self.data_dir)
        return s.to_json()

    def stage_baselines(self) -> dict:
        p, oracle = self.cfg["pipeline"], self.cfg["verbalizer"].oracle
        for name in ("popularity", "knn"):
            self._eval(name, "template", name, p.eval_limit)
        for spec in p.baseline_verbalizers:
            row, _ = parse_spec(spec)  # "zero-shot:max_new_tokens=64" is the zero-shot row
            self._eval(row, spec, oracle, p.eval_limit if row == "template" else p.llm_eval_limit)
        return {"rows": sorted(self.rows)}

    def launch_command(self, verb: str, out: Path, extra: list[str] | None = None) -> list[str]:
        """``accelerate launch`` argv for a training stage on a multi-GPU node (DeepSpeed ZeRO-3
        from the recipe's accelerate_config); the same minivz command runs in every process."""
        p = self.cfg["pipeline"]
        if not p.accelerate_config:
            raise ConfigError("hardware=multi-gpu needs accelerate_config (e.g. recipes/accelerate/zero3.yaml)")
        argv = ["accelerate", "launch", "--config_file", packaged_path(p.accelerate_config), "--num_processes",
                str(p.num_processes), "-m", "minivz.cli", "train", verb, "--recipe", self.recipe,
                "--data", str(self.data_dir), "--out", str(out)]
        for o in self.overrides + (extra or []):
            argv += ["--set", o]
        return argv

    def _launch(self, argv: list[str]) -> dict:
        import shutil
        import subprocess

        if shutil.which(argv[0]) is None:
            raise ImportError("multi-GPU stages run through accelerate: pip install accelerate deepspeed")
        self.say("  $ " + " ".join(argv))
        subprocess.run(argv, check=True)
        return {"launched": argv}

    def stage_verbalizer(self) -> dict:
        out = self.out / "verbalizer"
        if self.cfg["pipeline"].hardware == "multi-gpu":
            return self._launch(self.launch_command("verbalizer", out))
        from minivz.train.grpo import train_verbalizer

        return train_verbalizer(self.cfg["verbalizer"], self.data_dir, out)

    @property
    def rewrite_spec(self) -> str:
        # generate as long as the policy was trained to (max_completion_length), not the verbalizer's default
        v = self.cfg["verbalizer"]
        return f"rewrite:model={self.out / 'verbalizer' / 'final' / 'merged'},max_new_tokens={v.max_completion_length}"

    def rewrite_texts(self) -> str:
        """Generate (or resume) the trained verbalizer's text for the evaluated test rows into
        RUN/verbalized/rewrite-test.jsonl, once for both the rewrite and the two-stage row; returns
        the ``cached`` verbalizer spec that reads it."""
        from minivz.dataset import PreparedData
        from minivz.verbalize.cache import verbalize_split

        path = self.out / "verbalized" / "rewrite-test.jsonl"
        verbalize_split(PreparedData.load(self.data_dir), self.rewrite_spec, "test", self.cfg["pipeline"].llm_eval_limit,
                        self.cfg["eval"].eval_history, path)
        return f"cached:path={path}"

    def stage_rewrite(self) -> dict:
        self._eval("rewrite", self.rewrite_texts(), self.cfg["verbalizer"].oracle, self.cfg["pipeline"].llm_eval_limit)
        return {"row": "rewrite"}

    def stage_reasoner(self) -> dict:
        import dataclasses

        from minivz.train.reasoner import train_reasoner

        info = {}
        for row, verb in (("reasoner-only", "template"), ("two-stage", self.rewrite_spec)):
            cfg = dataclasses.replace(self.cfg["reasoner"], reasoner_verbalizer=verb)
            run = self.out / f"reasoner-{'template' if verb == 'template' else 'rewrite'}"
            if self.cfg["pipeline"].hardware == "multi-gpu":
                info[row] = self._launch(self.launch_command("reasoner", run, [f"reasoner_verbalizer={verb}"]))
            else:
                info[row] = train_reasoner(cfg, self.data_dir, run)
            # both rows on the same llm_eval_limit test rows: the trained reasoner is an LLM scorer
            # (slow on CPU), and reasoner-only vs two-stage is a paired comparison
            self._eval(row, "template" if verb == "template" else self.rewrite_texts(),
                       f"hf:model={run / 'final' / 'merged'}", self.cfg["pipeline"].llm_eval_limit)
        return info

    def stage_export(self) -> dict:
        from minivz.export import export_gguf

        q = self.cfg["pipeline"].export_quant
        return {
            "verbalizer": export_gguf(self.out / "verbalizer" / "final" / "merged", self.out / "export" / "verbalizer", q),
            "reasoner": export_gguf(self.out / "reasoner-rewrite" / "final" / "merged", self.out / "export" / "reasoner", q),
        }

    def stage_table(self) -> dict:
        from minivz.report import bar_chart, compare_runs, to_markdown

        order = ["template", "zero-shot", "action", "rewrite", "reasoner-only", "two-stage", "popularity", "knn"]
        present = [r for r in order if (self.out / "eval" / r / "metrics.json").exists()]
        if "template" not in present:
            raise RuntimeError("the table needs the template row (stage baselines) as its reference")
        rows = compare_runs([self.out / "eval" / r for r in present], labels=present)
        (self.out / "results.json").write_text(json.dumps(rows, indent=2))
        oracle = self.cfg["verbalizer"].oracle
        head = (f"# minivz recipe {self.recipe}\n\nRows template..rewrite: verbalizer under the frozen oracle "
                f"`{oracle}`; reasoner-only / two-stage: the trained reasoner on template / rewrite input; "
                "popularity and item-kNN read ids only. Relative change vs template: paired bootstrap 95% CI.\n\n")
        (self.out / "results.md").write_text(head + to_markdown(rows))
        bar_chart(rows, self.out / "results.png", title=f"minivz recipe {self.recipe}: Recall@1 (95% CI)")
        return {"rows": present}

    def run(self) -> list[dict]:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "recipe.yaml").write_text(
            "\n".join(f"# {k}\n{dump_yaml(v)}" for k, v in self.cfg.items()))
        report = []
        for stage in STAGES:
            if stage in self.cfg["pipeline"].skip_stages:
                self.say(f"[skip] {stage} (skip_stages)")
                continue
            if self._done(stage):
                self.say(f"[done] {stage} (already complete: {self._marker(stage)})")
                if stage in ("baselines", "rewrite", "reasoner"):
                    for d in (self.out / "eval").glob("*"):
                        self.rows[d.name] = d
                continue
            self.say(f"[run ] {stage}")
            t0 = time.perf_counter()
            info = getattr(self, f"stage_{stage}")()
            secs = time.perf_counter() - t0
            self._finish(stage, {"seconds": round(secs, 1), "info": info})
            report.append({"stage": stage, "seconds": round(secs, 1)})
            self.say(f"       {stage} finished in {secs:.1f} s")
        return report


def list_recipes() -> list[tuple[str, str]]:
    from minivz.config import RECIPES_DIR

    out = []
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        out.append((p.stem, load_recipe(str(p)).get("description", "")))
    return out
