"""Training: the GRPO verbalizer (stage 1 of the paper) and the reasoner (stage 2).

    minivz train verbalizer --recipe tiny-cpu --data runs/tiny-cpu/data --out runs/tiny-cpu/verbalizer

    from minivz.config import VerbalizerTrainConfig
    from minivz.train.grpo import train_verbalizer

Modules: ``rewards`` (accuracy / length reward registry), ``policy`` (LoRA policy via peft or
Unsloth), ``unsloth_policy`` (the only module importing unsloth), ``grpo`` (dataset, TRL
GRPOTrainer, run directory), ``reasoner`` (SFT + GRPO of the reasoner), ``memory`` (dry-run
estimate), ``curve``. Importing this package imports no torch, trl or unsloth; the config classes
live in ``minivz.config``, the
commands in ``minivz.cli``.
"""
