"""One interface for every generation engine: prompts + sampling parameters -> completions with logprobs.

Also what every engine shares: the JSON forms of `SamplingParams` and `Sample` (the rollout server's wire
format), the prompt-length policy (`PromptLimit`: truncate from the left with a count logged, or refuse), and
the errors engines raise.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Prompt = str | list[dict[str, Any]]
Truncation = Literal["left", "error"]

logger = logging.getLogger("rollout")


class PromptTooLongError(ValueError):
    """A prompt does not fit the engine's prompt budget and the policy is `error` (or nothing fits at all)."""


class UnsupportedRequestError(ValueError):
    """The engine cannot serve these sampling parameters (e.g. vLLM refuses temperature > 2): a 400 over HTTP."""


class PromptRenderError(ValueError):
    """A chat prompt the tokenizer cannot render: it has no chat template, or its template rejects the messages
    (roles, order, content). The message is one line."""


class RolloutServerError(RuntimeError):
    """The rollout server refused a request, or could not be reached after every retry (names host:port)."""


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
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the rollout server's wire format)."""
        data = dataclasses.asdict(self)
        data["stop"] = list(self.stop)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplingParams:
        """Inverse of `to_dict`; unknown keys or bad values raise ValueError naming them."""
        if not isinstance(data, dict):
            raise ValueError(f"sampling params must be an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown sampling parameter {unknown[0]!r}; allowed: {', '.join(sorted(names))}")
        values = dict(data)
        for key in ("n", "top_k", "max_tokens"):
            if key in values and (isinstance(values[key], bool) or not isinstance(values[key], int)):
                raise ValueError(f"{key} must be an integer, got {values[key]!r}")
        for key in ("temperature", "top_p"):
            if key in values and (isinstance(values[key], bool) or not isinstance(values[key], int | float)):
                raise ValueError(f"{key} must be a number, got {values[key]!r}")
        seed = values.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or null, got {seed!r}")
        if "stop" in values:
            stop = values["stop"]
            if not isinstance(stop, list | tuple) or not all(isinstance(x, str) and x for x in stop):
                raise ValueError(f"stop must be a list of non-empty strings, got {stop!r}")
            values["stop"] = tuple(stop)
        return cls(**values)


@dataclass
class Sample:
    """One completion: its text, prompt and completion token ids, per-token logprobs and why it ended.

    `logprobs[t]` is log pi(completion_ids[t] | prefix) under the sampling distribution at temperature T
    (raw logits / T, before top-k/top-p truncation), the quantity TRL recomputes as old_per_token_logps.
    The vLLM engine matches this with top_k = 0 and top_p = 1; with truncation on, its logprobs are those of the
    truncated, renormalised distribution (it warns).
    """

    text: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    finish_reason: Literal["stop", "length"]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the rollout server's wire format)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        """Inverse of `to_dict`; a missing field raises ValueError naming it."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name != "extra" and f.name not in data]
        if missing:
            raise ValueError(f"sample is missing field(s) {missing}")
        return cls(
            text=str(data["text"]),
            prompt_ids=[int(x) for x in data["prompt_ids"]],
            completion_ids=[int(x) for x in data["completion_ids"]],
            logprobs=[float(x) for x in data["logprobs"]],
            finish_reason=data["finish_reason"],
            extra=dict(data.get("extra") or {}),
        )


@dataclass(frozen=True)
class PromptLimit:
    """What to do with prompts longer than the budget: cut from the left (keeping the end of the prompt, where
    the question and the generation prompt are) with a count logged, or refuse with `PromptTooLongError`.

    The budget is `max_prompt_tokens`, or when that is None the model's context length minus the request's
    `max_tokens` (so prompt + completion always fit).
    """

    max_prompt_tokens: int | None = None
    truncation: Truncation = "left"

    def __post_init__(self) -> None:
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise ValueError(f"max_prompt_tokens must be >= 1 or None, got {self.max_prompt_tokens}")
        if self.truncation not in ("left", "error"):
            raise ValueError(f"prompt truncation must be 'left' or 'error', got {self.truncation!r}")

    def budget(self, context_length: int | None, max_tokens: int) -> int | None:
        """Most prompt tokens allowed for a request of `max_tokens` (None = no limit known)."""
        return self._budget(context_length, max_tokens)[0]

    def _budget(self, context_length: int | None, max_tokens: int) -> tuple[int | None, str]:
        room = None if context_length is None else context_length - max_tokens
        if room is not None and room < 1:
            raise PromptTooLongError(
                f"max_tokens={max_tokens} leaves no room for a prompt in the model's context of {context_length} "
                "tokens; lower max_tokens"
            )
        context = f"the model's context {context_length} minus max_tokens {max_tokens}"
        if self.max_prompt_tokens is None or (room is not None and room < self.max_prompt_tokens):
            return room, context
        return self.max_prompt_tokens, f"max_prompt_tokens={self.max_prompt_tokens}"

    def apply(
        self, prompt_ids: Sequence[list[int]], context_length: int | None, max_tokens: int
    ) -> tuple[list[list[int]], int]:
        """Fit every prompt to the budget; returns (ids, number truncated). Logs a warning when it cut any."""
        limit, source = self._budget(context_length, max_tokens)
        too_long = [] if limit is None else [i for i, ids in enumerate(prompt_ids) if len(ids) > limit]
        if limit is None or not too_long:
            return [list(ids) for ids in prompt_ids], 0
        if self.truncation == "error":
            first = too_long[0]
            raise PromptTooLongError(
                f"{len(too_long)} of {len(prompt_ids)} prompts are longer than {limit} tokens ({source}); the first "
                f"is prompt {first} with {len(prompt_ids[first])} tokens. Shorten them or allow truncation from "
                "the left (prompt_truncation: left)"
            )
        logger.warning(
            "rollout: truncated %d of %d prompts from the left to %d tokens (%s; the longest had %d)",
            len(too_long),
            len(prompt_ids),
            limit,
            source,
            max(len(prompt_ids[i]) for i in too_long),
        )
        return [list(ids[-limit:]) for ids in prompt_ids], len(too_long)


class RolloutEngine(Protocol):
    """A generation engine: `generate(prompts, params)` returns, per prompt, `params.n` samples."""

    name: str

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]: ...


@runtime_checkable
class WeightReceiver(Protocol):
    """An engine holding its own copy of the policy (vLLM, a rollout server) that the learner syncs after updates.

    `update_weights` takes full weights by their Hugging Face names (a subset is allowed: only those are
    replaced; any loaded adapter is dropped). `load_adapter` takes a PEFT LoRA adapter (the tensors of
    `peft.get_peft_model_state_dict` and the adapter's `LoraConfig` as a dict) and generates with it on top of
    the base weights from then on.
    """

    def update_weights(self, tensors: dict[str, Any]) -> None: ...

    def load_adapter(self, tensors: dict[str, Any], config: dict[str, Any]) -> None: ...
