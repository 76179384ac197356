"""A tiny random-weight Qwen3 (``Qwen3ForCausalLM``) with a Qwen-style tokenizer, built offline.

paper-8b's models are Qwen3-8B; this is the same architecture (q/k RMSNorm, GQA, tied embeddings
off) at hidden 64, 2 layers, with a byte-level BPE trained on MovieLens titles and template lines
behind Qwen2's pre-tokenizer regex (so the GGUF exporter names it ``qwen2``, as for Qwen3), the
ChatML specials and a chat template with Qwen3's ``enable_thinking`` switch: with thinking off the
assistant turn opens with an empty, closed ``<think>\\n\\n</think>\\n\\n`` block (as Qwen3's own
template writes it); with it on the model is left to write its own ``<think>``.
"""

from __future__ import annotations

from pathlib import Path

QWEN3_STYLE_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def build_tiny_qwen3(path: str | Path, data) -> str:
    import torch
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from minivz.export import _QWEN2_REGEX
    from minivz.prompt import PROMPT_DIR
    from minivz.verbalize.template import template_text

    ex = data.examples("train", limit=300)
    corpus = [template_text(h) for h in data.histories(ex, max_events=5)]
    corpus += data.items["title"].to_pylist()
    corpus += [p.read_text() for p in PROMPT_DIR.glob("*.txt")] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>")
    fast.chat_template = QWEN3_STYLE_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(
        vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=fast.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=fast.convert_tokens_to_ids("<|endoftext|>"), initializer_range=0.2)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(path)
    return str(path)
