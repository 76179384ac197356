"""The one module that imports Unsloth (GPU recipe path: 4-bit base + LoRA, fast kernels).

Imported only by ``minivz.train.policy.resolve_backend`` when ``backend`` resolves to unsloth, and
before trl / transformers / peft are imported anywhere (Unsloth patches them on import).

    pip install unsloth==2026.10.9 trl==1.15.0 transformers==5.17.0    # CUDA machine
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minivz.install import TRANSFORMERS, TRL_UNSLOTH, UNSLOTH, pip

try:
    import unsloth  # noqa: F401 - must precede trl/transformers/peft
    from unsloth import FastLanguageModel
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"backend=unsloth needs Unsloth ({e}); install with: "
                      f"{pip(UNSLOTH, TRL_UNSLOTH, TRANSFORMERS)}") from e


def load_unsloth_policy(source: str, cfg: Any, targets: list[str]) -> tuple[Any, Any]:
    """(PeftModel with LoRA, tokenizer) through ``FastLanguageModel``: the same object type the peft
    backend returns, so GRPOTrainer sees one kind of policy."""
    from minivz.models import top_layers

    model, tok = FastLanguageModel.from_pretrained(
        model_name=source,
        max_seq_length=cfg.max_prompt_length + cfg.max_completion_length,
        load_in_4bit=cfg.load_in_4bit,
        dtype=None,  # Unsloth picks bf16 where supported
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=top_layers(model, cfg.lora_layers),
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
        random_state=cfg.seed,
    )
    return model, tok


def save_unsloth_merged(model: Any, tokenizer: Any, out: Path) -> None:
    """Merged 16-bit HF dir (de-quantizes a 4-bit base before merging, as Unsloth documents)."""
    model.save_pretrained_merged(str(out), tokenizer, save_method="merged_16bit")
