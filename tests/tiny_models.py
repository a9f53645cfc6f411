"""Tiny random models and tokenizers built locally for tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Question: What do you know about rivers?\nAnswer: Rivers carry fresh water to the sea.",
    "Question: Tell me about bread.\nAnswer: Bread is baked from flour, water and yeast.",
    "Question: Why are bees important?\nAnswer: Bees pollinate flowers and crops.",
    "Question: What is a volcano?\nAnswer: A volcano is an opening where lava erupts.",
] * 8


def build_tokenizer(path: Path, vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on a few sentences, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|pad|>")
    fast.save_pretrained(str(path))
    return fast


def tiny_qwen2_config(tokenizer, **overrides):
    """A 2-layer, 32-wide Qwen2 config sized to `tokenizer` (shared by the tiny policy and reward model)."""
    from transformers import Qwen2Config

    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    settings.update(overrides)
    return Qwen2Config(**settings)


def build_tiny_causal_lm(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 causal LM (~100k parameters) with its tokenizer, saved to `path`."""
    import torch
    from transformers import GenerationConfig, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    torch.manual_seed(seed)
    config = tiny_qwen2_config(
        tokenizer, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=None
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=True
    )
    model.save_pretrained(str(path))
    return path


def build_tiny_reward_model(path: Path, seed: int = 0) -> Path:
    """A random 2-layer Qwen2 sequence classifier (1 label) with its tokenizer, saved to `path`."""
    import torch
    from transformers import Qwen2ForSequenceClassification

    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path)
    torch.manual_seed(seed)
    Qwen2ForSequenceClassification(tiny_qwen2_config(tokenizer, num_labels=1)).save_pretrained(str(path))
    return path
