"""One interface for every generation engine: prompts + sampling parameters -> completions with logprobs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Prompt = str | list[dict[str, Any]]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by all engines (names follow vLLM's SamplingParams)."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class Sample:
    """One completion: its text, prompt and completion token ids, per-token logprobs and why it ended.

    `logprobs[t]` is log pi(completion_ids[t] | prefix) under the sampling distribution at temperature T
    (raw logits / T, before top-k/top-p truncation), the quantity TRL recomputes as old_per_token_logps.
    """

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    extra: dict[str, Any] = field(default_factory=dict)


class RolloutEngine(Protocol):
    """A generation engine: `generate(prompts, params)` returns, per prompt, `params.n` samples."""

    name: str

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]: ...
