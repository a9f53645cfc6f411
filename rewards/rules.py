"""Rule-based reward components that need no model: length (and, later, format and exact match)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from rewards.errors import RewardConfigError
from rewards.text import completion_text

LengthUnit = Literal["tokens", "words", "chars"]
_WORD = re.compile(r"\S+")


def text_length(text: str, unit: LengthUnit, token_ids: Sequence[int] | None = None) -> int:
    """Length of `text` in `unit`: whitespace-separated words, characters, or tokens (needs `token_ids`)."""
    if unit == "words":
        return len(_WORD.findall(text))
    if unit == "chars":
        return len(text)
    if token_ids is None:
        raise RewardConfigError("length unit 'tokens' needs the completions' token ids (completion_ids)")
    return len(token_ids)


def target_length_score(length: float, target: float) -> float:
    """Triangle score peaking at `target`: 1 - min(1, |length - target| / target), in [0, 1]."""
    return 1.0 - min(1.0, abs(length - target) / target)


def band_length_score(length: float, lower: float, upper: float) -> float:
    """1 inside [lower, upper]; outside, falls linearly to 0 at 0 (below) or at 2 * upper (above)."""
    if lower <= length <= upper:
        return 1.0
    if length < lower:
        return length / lower if lower > 0 else 0.0
    return max(0.0, 1.0 - (length - upper) / upper)


class LengthReward:
    """Length objective: ``mode='target'`` (peak at a target), ``'band'`` (flat inside a band) or ``'count'``.

    ``count`` returns the raw length (use a negative weight to prefer short answers). Lengths are measured in
    ``unit`` = words (whitespace split), chars, or tokens (the completion's token ids from TRL).
    """

    def __init__(
        self,
        name: str = "length",
        unit: LengthUnit = "words",
        mode: Literal["target", "band", "count"] = "target",
        target: float | None = None,
        band: Sequence[float] | None = None,
    ) -> None:
        if unit not in ("tokens", "words", "chars"):
            raise RewardConfigError(f"length.unit: {unit!r} is not allowed; choose tokens, words or chars")
        if mode == "target":
            if target is None or not target > 0:
                raise RewardConfigError(f"length.target: mode 'target' needs a target > 0, got {target!r}")
        elif mode == "band":
            if band is None or len(band) != 2:
                raise RewardConfigError(f"length.band: mode 'band' needs [lower, upper], got {band!r}")
            if not 0 <= band[0] <= band[1] or band[1] == 0:
                raise RewardConfigError(f"length.band: need 0 <= lower <= upper and upper > 0, got {list(band)}")
        elif mode != "count":
            raise RewardConfigError(f"length.mode: {mode!r} is not allowed; choose target, band or count")
        self.name = name
        self.unit: LengthUnit = unit
        self.mode = mode
        self.target = float(target) if target is not None else None
        self.band = (float(band[0]), float(band[1])) if band is not None else None

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        ids = columns.get("completion_ids")
        scores: list[float | None] = []
        for i, completion in enumerate(completions):
            length = text_length(completion_text(completion), self.unit, ids[i] if ids is not None else None)
            if self.mode == "count":
                scores.append(float(length))
            elif self.mode == "target":
                assert self.target is not None
                scores.append(target_length_score(length, self.target))
            else:
                assert self.band is not None
                scores.append(band_length_score(length, *self.band))
        return scores
