"""Length-conditional reward masking (BalCapRL, arXiv 2605.07394, generalised to any objective).

An objective carrying a `LengthCondition` counts only for responses whose length is in proportion to a
reference length: with rho = len(response) / ref_len, the value is kept when tau_l <= rho <= tau_u (both ends
inclusive; BalCapRL: 0.5 and 2.0) and replaced otherwise by 0 (default, "zero") or by NaN ("nan" = not
applicable, which the composer's normalisation leaves out of the group statistics and gives advantage 0).

The paper's details are only partly public, so every choice is an explicit option:

* ``unit``: how lengths are measured, ``"words"`` (default; whitespace-separated, like `rules.text_length`),
  ``"chars"`` or ``"tokens"``. Token lengths of responses come from the ``completion_ids`` column (TRL's
  completion token ids); a reference measured in tokens needs a ``reference_tokens``-like column (token ids or
  a token count per row) because the composer holds no tokenizer; a missing column is an error naming it.
* ``reference`` / ``target``: the reference length comes from a dataset column (default ``"reference"``;
  its text is measured in ``unit``, or a number in the column is taken as the length itself) or from a fixed
  ``target`` length. Exactly one of the two.
* ``missing``: rows whose reference is absent (None, empty text, length 0) cannot be judged: ``"keep"``
  (default) leaves the value as scored, ``"mask"`` treats the row as outside the band.

Shapes: the composer's matrix R[N, K]; a condition produces a boolean "outside" mask [N] for its column.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rewards.errors import RewardConfigError
from rewards.text import completion_text

LengthUnit = Literal["tokens", "words", "chars"]
Outside = Literal["zero", "nan"]
Missing = Literal["keep", "mask"]

_FIELDS = ("unit", "reference", "target", "reference_tokens", "tau_l", "tau_u", "outside", "missing")


def _text_of(value: Any) -> str:
    """Plain text of a completion or reference (a string, or a list of chat messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return completion_text(value)
    raise TypeError(f"expected text or a list of chat messages, got {type(value).__name__}")


def _ascii_word_counts(texts: Sequence[str]) -> np.ndarray:
    """Word counts [n] of ASCII texts in one vectorised pass: a word starts at a non-space byte after a space.

    ASCII whitespace as ``str.split()`` sees it: \\t \\n \\v \\f \\r (9-13), the separators \\x1c-\\x1f and space.
    The texts are joined with (and framed by) newlines, so no word spans two texts.
    """
    joined = np.frombuffer(("\n" + "\n".join(texts) + "\n").encode("ascii"), dtype=np.uint8)
    space = (joined <= 32) & ((joined == 32) | ((joined >= 9) & (joined <= 13)) | (joined >= 28))
    starts = space[:-1] > space[1:]  # index i: a space at i, a word's first byte at i + 1
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    separators = np.cumsum(lengths + 1) - lengths - 1  # index of the newline before each text
    return np.add.reduceat(starts.view(np.uint8), separators, dtype=np.int64).astype(np.float64)


def text_lengths(texts: Sequence[Any], unit: Literal["words", "chars"]) -> np.ndarray:
    """Lengths [N] float64 of N texts (or chat-message lists) in words (whitespace split) or characters.

    Words are counted as ``len(text.split())``, which splits on the same whitespace as the regex ``\\S+`` of
    `rules.text_length`; ASCII texts are counted in one vectorised pass (several times faster than
    splitting). Equal consecutive texts (a group shares its reference) are measured once.
    """
    distinct: list[str] = []
    which: list[int] = []
    all_ascii = True
    previous: Any = None
    for i, value in enumerate(texts):
        if not i or value is not previous and value != previous:
            text = _text_of(value)
            all_ascii = all_ascii and text.isascii()
            distinct.append(text)
            previous = value
        which.append(len(distinct) - 1)
    if not distinct:
        return np.zeros(0)
    if unit == "chars":
        lengths = np.fromiter((len(t) for t in distinct), dtype=np.float64, count=len(distinct))
    elif all_ascii:
        lengths = _ascii_word_counts(distinct)
    else:
        lengths = np.empty(len(distinct))
        ascii_idx = [j for j, t in enumerate(distinct) if t.isascii()]
        if ascii_idx:
            lengths[ascii_idx] = _ascii_word_counts([distinct[j] for j in ascii_idx])
        for j, t in enumerate(distinct):
            if not t.isascii():
                lengths[j] = len(t.split())
    return lengths[np.asarray(which, dtype=np.intp)]


def _token_count(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
        return float(value)
    return float(len(value))


@dataclass(frozen=True)
class LengthCondition:
    """The length condition of one objective (see the module docstring for every option).

    Args:
        unit: "tokens", "words" or "chars".
        reference: column holding the reference (text, chat messages, or a number = its length); default
            "reference" when no `target` is given, None when it is.
        target: fixed reference length (> 0) instead of a column.
        reference_tokens: with unit "tokens" and a reference column, the column holding the reference's token
            ids (or token count) per row.
        tau_l, tau_u: the band on rho = len(response) / ref_len, 0 < tau_l <= tau_u (BalCapRL: 0.5, 2.0).
        outside: value outside the band, "zero" (0.0) or "nan" (not applicable).
        missing: rows without a reference length, "keep" the value or "mask" it like an out-of-band row.
    """

    unit: LengthUnit = "words"
    reference: str | None = None
    target: float | None = None
    reference_tokens: str = "reference_tokens"
    tau_l: float = 0.5
    tau_u: float = 2.0
    outside: Outside = "zero"
    missing: Missing = "keep"

    def __post_init__(self) -> None:
        where = "length_condition"
        if self.unit not in ("tokens", "words", "chars"):
            raise RewardConfigError(f"{where}.unit: {self.unit!r} is not allowed; choose tokens, words or chars")
        if self.target is not None:
            if self.reference is not None:
                raise RewardConfigError(
                    f"{where}.target: give either a reference column ({self.reference!r}) or a fixed target, not both"
                )
            if not _positive(self.target):
                raise RewardConfigError(f"{where}.target: must be a number > 0, got {self.target!r}")
        elif self.reference is None:
            object.__setattr__(self, "reference", "reference")
        elif not isinstance(self.reference, str) or not self.reference:
            raise RewardConfigError(f"{where}.reference: must be a column name, got {self.reference!r}")
        for name in ("tau_l", "tau_u"):
            if not _positive(getattr(self, name)):
                raise RewardConfigError(f"{where}.{name}: must be a number > 0, got {getattr(self, name)!r}")
        if self.tau_l > self.tau_u:
            raise RewardConfigError(f"{where}.tau_l: must be <= tau_u, got tau_l={self.tau_l} > tau_u={self.tau_u}")
        if self.outside not in ("zero", "nan"):
            raise RewardConfigError(f"{where}.outside: {self.outside!r} is not allowed; choose zero or nan")
        if self.missing not in ("keep", "mask"):
            raise RewardConfigError(f"{where}.missing: {self.missing!r} is not allowed; choose keep or mask")

    @classmethod
    def from_dict(cls, options: Mapping[str, Any]) -> LengthCondition:
        """Build from a config mapping; unknown keys raise RewardConfigError naming them."""
        unknown = sorted(set(options) - set(_FIELDS))
        if unknown:
            raise RewardConfigError(f"length_condition: unknown option(s) {unknown}; allowed: {', '.join(_FIELDS)}")
        return cls(**dict(options))

    @property
    def fill_value(self) -> float:
        """The value an out-of-band row gets: 0.0 or NaN."""
        return 0.0 if self.outside == "zero" else math.nan

    def response_lengths(self, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Lengths [N] of the responses in this condition's unit."""
        if self.unit == "tokens":
            ids = columns.get("completion_ids")
            if ids is None:
                raise RewardConfigError(
                    "length_condition.unit: 'tokens' needs the completions' token ids (column completion_ids)"
                )
            return np.fromiter((_token_count(x) for x in ids), dtype=np.float64, count=len(completions))
        return text_lengths(completions, self.unit)

    def reference_lengths(self, n: int, columns: Mapping[str, Sequence[Any]]) -> np.ndarray:
        """Reference lengths [n] (NaN where missing) in this condition's unit."""
        if self.target is not None:
            return np.full(n, float(self.target))
        assert self.reference is not None
        if self.unit == "tokens":
            column = columns.get(self.reference_tokens)
            if column is None:
                raise RewardConfigError(
                    f"length_condition.reference_tokens: unit 'tokens' with reference column {self.reference!r} "
                    f"needs the reference's token ids in column {self.reference_tokens!r}, which this batch lacks "
                    f"(add it to the dataset, or use unit words/chars, or a fixed target)"
                )
            lengths = np.fromiter((_token_count(x) for x in column), dtype=np.float64, count=n)
        else:
            column = columns.get(self.reference)
            if column is None:
                raise RewardConfigError(
                    f"length_condition.reference: column {self.reference!r} is not in this batch "
                    f"(columns: {', '.join(sorted(columns)) or 'none'})"
                )
            if len(column) != n:
                raise ValueError(f"column {self.reference!r} has {len(column)} rows for {n} completions")
            if all(type(value) is str for value in column):  # the common case: one text per row
                lengths = text_lengths(column, self.unit)
                lengths[~(lengths > 0)] = math.nan
                return lengths
            lengths = np.empty(n, dtype=np.float64)
            texts: list[Any] = []
            where: list[int] = []
            for i, value in enumerate(column):
                if value is None:
                    lengths[i] = math.nan
                elif isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool):
                    lengths[i] = float(value)
                else:
                    texts.append(value)
                    where.append(i)
            if texts:
                lengths[where] = text_lengths(texts, self.unit)
        lengths[~(lengths > 0)] = math.nan  # zero, negative or NaN: no usable reference length
        return lengths

    def outside_mask(
        self,
        completions: Sequence[Any],
        columns: Mapping[str, Sequence[Any]],
        response_lengths: np.ndarray | None = None,
    ) -> np.ndarray:
        """Boolean [N]: True where the objective's value is to be replaced (out of band, or missing + "mask").

        `response_lengths` [N] may be passed when already measured in this condition's unit.
        """
        n = len(completions)
        ref = self.reference_lengths(n, columns)
        lengths = self.response_lengths(completions, columns) if response_lengths is None else response_lengths
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = lengths / ref
            inside = (rho >= self.tau_l) & (rho <= self.tau_u)
        return np.where(np.isnan(ref), self.missing == "mask", ~inside)


def _positive(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number > 0 and not math.isnan(number)


def apply_length_masks(
    matrix: np.ndarray,
    names: Sequence[str],
    conditions: Mapping[str, LengthCondition],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
) -> tuple[np.ndarray, dict[str, int]]:
    """Apply each objective's length condition to R[N, K]; returns (masked copy of R, masked-row counts).

    The count for an objective is the number of rows whose value was replaced: rows outside the band (or
    missing a reference with ``missing="mask"``) whose score was not already NaN (a failure or "not
    applicable" stays as it is and is counted by the composer as before). Every objective has an entry (0
    without a condition), so logs have one key per objective. Response lengths are measured once per unit.
    """
    out = matrix.copy()
    masked = {name: 0 for name in names}
    index = {name: k for k, name in enumerate(names)}
    response_cache: dict[str, np.ndarray] = {}
    for name, condition in conditions.items():
        k = index[name]
        if condition.unit not in response_cache:
            response_cache[condition.unit] = condition.response_lengths(completions, columns)
        replace = condition.outside_mask(completions, columns, response_cache[condition.unit]) & ~np.isnan(out[:, k])
        out[replace, k] = condition.fill_value
        masked[name] = int(replace.sum())
    return out, masked
