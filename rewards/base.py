"""The reward component protocol shared by every objective the composer can hold."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RewardComponent(Protocol):
    """One objective: scores N completions, one float each.

    Called as ``component(prompts, completions, **columns)`` where ``prompts`` and ``completions`` are
    TRL-format (strings, or lists of chat messages) of length N and every extra dataset column arrives as a
    keyword holding a list of length N. Returns N values; ``None`` or NaN means "not applicable to this row".
    This is TRL's reward-function signature, so a component can be handed to TRL directly and a TRL reward
    function can be used as a component. ``name`` is the objective's name in logs and reports.
    """

    name: str

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]: ...


class RewardComponentBase(abc.ABC):
    """The base a reward component *class* must subclass to be named in a recipe as ``package.module:ClassName``.

    Subclassing it is the author's statement that the class is reward code: the recipe's `args` are passed to its
    constructor when the composer is built, and its `__call__` scores (see `RewardComponent`). A class that does
    not subclass it (a standard-library class, a process or socket type, any other library's class) is refused
    before it is called. A plain function with TRL's reward signature needs no base.
    """

    name: str = ""

    @abc.abstractmethod
    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        """One float (or None/NaN: not applicable) per completion."""
