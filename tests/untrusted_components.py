"""Things a recipe's `component: "module:attr"` may point at that are NOT reward code (tests/test_security.py,
tests/test_fuzz.py). Each writes the file named by its `sentinel` argument (or ALIGN_TEST_SENTINEL) if it is
ever called or constructed, so a test can prove that the registry refused it before calling anything."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rewards.base import RewardComponentBase


def _touch(sentinel: str | None, what: str) -> None:
    target = sentinel or os.environ.get("ALIGN_TEST_SENTINEL")
    if target:
        Path(target).write_text(what, encoding="utf-8")


class NotAComponent:
    """A class with a reward-like __call__ that does not subclass RewardComponentBase: never constructed."""

    def __init__(self, sentinel: str | None = None, **_: Any) -> None:
        _touch(sentinel, "NotAComponent constructed")

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        return [1.0] * len(completions)


class _CallableObject:
    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        _touch(kwargs.get("sentinel"), "callable object called")
        return [1.0] * len(completions)


callable_object = _CallableObject()  # an instance with TRL's signature: not a plain function, refused


def no_reward_signature(path: str | None = None, sentinel: str | None = None) -> None:
    """A plain function that does not take (prompts, completions): refused, never called."""
    _touch(sentinel, "no_reward_signature called")


def _reward(prompts: Sequence[Any], completions: Sequence[Any], sentinel: str | None = None, **_: Any) -> list[float]:
    _touch(sentinel, "partial called")
    return [1.0] * len(completions)


partial_reward = functools.partial(_reward)  # a functools.partial: not a plain function, refused


class AbstractComponent(RewardComponentBase):
    """Subclasses the base but never defines __call__: refused as abstract."""


class WordCount(RewardComponentBase):
    """A real reward component class: subclasses the base, takes its arguments, scores words."""

    def __init__(self, bonus: float = 0.0) -> None:
        self.bonus = bonus

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]) -> list[float]:
        return [len(str(c).split()) + self.bonus for c in completions]


def word_count(prompts: Sequence[Any], completions: Sequence[Any], bonus: float = 0.0, **_: Any) -> list[float]:
    """A real reward function in TRL's signature."""
    return [len(str(c).split()) + bonus for c in completions]
