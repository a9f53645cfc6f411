"""A reward-model component: any local `AutoModelForSequenceClassification` directory scores (prompt, answer)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.errors import RewardConfigError
from rewards.text import completion_text, prompt_text


class RewardModelComponent:
    """Scores each completion with a sequence-classification reward model (logit of label 0, or `label`).

    Standard prompts are scored on ``prompt + completion`` (as TRL's GRPOTrainer does); conversational ones
    through the tokenizer's chat template when it has one. Loads only from a local folder
    (``local_files_only``); remote code runs only with ``trust_remote_code: true``.
    """

    def __init__(
        self,
        path: str,
        name: str = "reward_model",
        batch_size: int = 16,
        max_length: int = 512,
        label: int = 0,
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise RewardConfigError(f"reward model path {str(folder)!r} is not a model directory (no config.json)")
        from rewards.loading import whole_model_loading

        try:
            with whole_model_loading():  # a scoring model: whole on every process, also inside a ZeRO-3 run
                self.tokenizer = AutoTokenizer.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=trust_remote_code
                )
                self.model = AutoModelForSequenceClassification.from_pretrained(
                    str(folder), local_files_only=True, trust_remote_code=trust_remote_code, use_safetensors=True
                ).to(device)
        except (OSError, ValueError) as err:
            raise RewardConfigError(f"cannot load reward model {str(folder)!r}: {str(err).splitlines()[0]}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if not 0 <= label < self.model.config.num_labels:
            raise RewardConfigError(f"label {label} is out of range for a model with {self.model.config.num_labels}")
        self.model.eval()
        self.name = name
        self.batch_size = batch_size
        self.max_length = max_length
        self.label = label
        self.device = device
        self._torch = torch

    def _text(self, prompt: Any, completion: Any) -> str:
        if isinstance(prompt, list) and getattr(self.tokenizer, "chat_template", None):
            messages = list(prompt) + [{"role": "assistant", "content": completion_text(completion)}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt_text(prompt) + completion_text(completion)

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        texts = [self._text(p, c) for p, c in zip(prompts, completions)]
        scores: list[float | None] = []
        with self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                ).to(self.device)
                logits = self.model(**batch).logits[:, self.label]
                scores.extend(float(x) for x in logits.float().cpu())
        return scores
