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


class FormatReward:
    """1.0 when the completion matches a regular expression (``re.search``, or the whole text with ``full``)."""

    def __init__(self, pattern: str, name: str = "format", full: bool = False, flags: str = "") -> None:
        allowed = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
        unknown = set(flags) - set(allowed)
        if unknown:
            raise RewardConfigError(f"format.flags: unknown flags {sorted(unknown)}; allowed: i, m, s")
        compiled_flags = 0
        for flag in flags:
            compiled_flags |= allowed[flag]
        try:
            self.regex = re.compile(pattern, compiled_flags)
        except re.error as err:
            raise RewardConfigError(f"format.pattern: {pattern!r} is not a valid regular expression ({err})") from None
        self.name = name
        self.full = full

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        match = self.regex.fullmatch if self.full else self.regex.search
        return [1.0 if match(completion_text(c)) else 0.0 for c in completions]


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, squeeze spaces (the SQuAD answer normalisation)."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


class ExactMatchReward:
    """Verifiable answer: 1.0 when the extracted answer equals the row's answer column, else 0.0.

    ``extract`` is a regex whose first group is the answer (default: the whole completion). Rows whose answer
    column is missing or empty are not applicable (None). ``normalize`` applies SQuAD-style normalisation.
    """

    def __init__(
        self, name: str = "exact_match", column: str = "answer", extract: str | None = None, normalize: bool = True
    ) -> None:
        try:
            self.extract = re.compile(extract) if extract else None
        except re.error as err:
            message = f"exact_match.extract: {extract!r} is not a valid regular expression ({err})"
            raise RewardConfigError(message) from None
        if self.extract is not None and self.extract.groups < 1:
            raise RewardConfigError("exact_match.extract: the pattern needs one capturing group for the answer")
        self.name = name
        self.column = column
        self.normalize = normalize

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        answers = columns.get(self.column)
        if answers is None:
            raise RewardConfigError(f"exact_match: the data has no {self.column!r} column")
        scores: list[float | None] = []
        for completion, answer in zip(completions, answers):
            if answer is None or str(answer).strip() == "":
                scores.append(None)
                continue
            text = completion_text(completion)
            if self.extract is not None:
                found = self.extract.search(text)
                if found is None:
                    scores.append(0.0)
                    continue
                text = found.group(1)
            predicted, expected = (text.strip(), str(answer).strip())
            if self.normalize:
                predicted, expected = normalize_answer(predicted), normalize_answer(expected)
            scores.append(1.0 if predicted == expected else 0.0)
        return scores


class RepetitionReward:
    """Distinct word n-grams / all n-grams (1.0 when there are none): 1 = no repetition (R^3's RP for n=3)."""

    def __init__(self, name: str = "repetition", n: int = 3) -> None:
        if n < 1:
            raise RewardConfigError(f"repetition.n: must be >= 1, got {n}")
        self.name = name
        self.n = n

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        return [distinct_ngram_ratio(completion_text(c), self.n) for c in completions]


def distinct_ngram_ratio(text: str, n: int) -> float:
    """Unique word n-grams / all word n-grams of `text`; 1.0 when it has fewer than n words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0
