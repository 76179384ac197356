"""Training: the GRPO verbalizer (stage 1 of the paper).

    minivz train verbalizer --recipe tiny-cpu --data runs/tiny-cpu/data --out runs/tiny-cpu/verbalizer

    from minivz.train import VerbalizerTrainConfig, train_verbalizer

Modules: ``config`` (VerbalizerTrainConfig), ``rewards`` (accuracy / length reward registry),
``policy`` (LoRA policy via peft or Unsloth), ``unsloth_policy`` (the only module importing unsloth),
``grpo`` (dataset, TRL GRPOTrainer, run directory), ``memory`` (dry-run estimate); the commands
are in ``minivz.cli``.
Importing this package imports no torch, trl or unsloth.
"""

__all__ = ["VerbalizerTrainConfig", "train_verbalizer"]


def __getattr__(name: str):
    # Lazy, so minivz.config may import minivz.train.config (to register the section) without a cycle.
    if name == "VerbalizerTrainConfig":
        from minivz.train.config import VerbalizerTrainConfig

        return VerbalizerTrainConfig
    if name == "train_verbalizer":
        from minivz.train.grpo import train_verbalizer

        return train_verbalizer
    raise AttributeError(f"module 'minivz.train' has no attribute {name!r}")
