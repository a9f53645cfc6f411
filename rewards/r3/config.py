"""Every option of R^3 in one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from rewards.errors import RewardConfigError
from rewards.r3.cleaning import DEFAULT_STOP_STRINGS
from rewards.r3.maths import DEFAULT_MAX_LENGTH, DEFAULT_SCALE
from rewards.r3.retriever import BACKENDS

BRANCH_RULES: tuple[str, ...] = ("auto", "qtype", "reference", "none")


@dataclass(frozen=True)
class R3Config:
    """Every option of R^3; see :mod:`rewards.r3` for what each choice means.

    Attributes:
        use_qr, use_rar, use_li, use_rp: factor switches; a factor switched off is 1.
        scale: s, dividing RAR in the constrained branch (> 0).
        max_length: L_max in tokens; the constrained branch multiplies by L_max / 100 (> 0).
        branch: "auto", "qtype", "reference" or "none": which rows are constrained.
        qtype_column: dataset column holding the prompt type.
        constrained_values: qtype values (case-insensitive) that mark a row constrained.
        reference_column: dataset column holding the reference answer.
        clean_query: strip chat markup, system prompt and role tags from the query.
        cut_response: cut the response at the first of ``stop_strings``.
        stop_strings: where responses are cut.
        copy_guard: scale QR down for responses that restate the question (off: the paper's reward).
        copy_guard_min_novelty: novelty below which the guard scales QR by novelty / this, in (0, 1].
        copy_guard_min_similarity: QR at or above which the guard looks at novelty at all, in [-1, 1].
        backend: retriever backend, "fp32" or "int8".
        batch_size: most rows in one retriever forward pass.
        cache_size: LRU entries for prompt and reference embeddings.
    """

    use_qr: bool = True
    use_rar: bool = True
    use_li: bool = True
    use_rp: bool = True
    scale: float = DEFAULT_SCALE
    max_length: int = DEFAULT_MAX_LENGTH
    branch: str = "auto"
    qtype_column: str = "qtype"
    constrained_values: tuple[str, ...] = ("CONSTRAINED",)
    reference_column: str = "reference"
    clean_query: bool = True
    cut_response: bool = True
    stop_strings: tuple[str, ...] = field(default=DEFAULT_STOP_STRINGS)
    copy_guard: bool = False
    copy_guard_min_novelty: float = 0.5
    copy_guard_min_similarity: float = 0.5
    backend: str = "fp32"
    batch_size: int = 64
    cache_size: int = 8192

    def __post_init__(self) -> None:
        for name in ("use_qr", "use_rar", "use_li", "use_rp", "clean_query", "cut_response", "copy_guard"):
            if not isinstance(getattr(self, name), bool):
                raise RewardConfigError(f"r3.{name}: must be true or false, got {getattr(self, name)!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not self.scale > 0:
            raise RewardConfigError(f"r3.scale: must be a number > 0, got {self.scale!r}")
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length <= 0:
            raise RewardConfigError(f"r3.max_length: must be an integer > 0, got {self.max_length!r}")
        if self.branch not in BRANCH_RULES:
            raise RewardConfigError(f"r3.branch: {self.branch!r} is not allowed; choose {', '.join(BRANCH_RULES)}")
        if self.backend not in BACKENDS:
            raise RewardConfigError(f"r3.backend: unknown backend {self.backend!r}; choose {', '.join(BACKENDS)}")
        for name in ("qtype_column", "reference_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RewardConfigError(f"r3.{name}: must be a non-empty column name, got {getattr(self, name)!r}")
        for name in ("constrained_values", "stop_strings"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
                raise RewardConfigError(f"r3.{name}: must be a list of non-empty strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not 0 < self.copy_guard_min_novelty <= 1:
            raise RewardConfigError(
                f"r3.copy_guard_min_novelty: must be in (0, 1], got {self.copy_guard_min_novelty!r}"
            )
        if not -1 <= self.copy_guard_min_similarity <= 1:
            raise RewardConfigError(
                f"r3.copy_guard_min_similarity: must be in [-1, 1], got {self.copy_guard_min_similarity!r}"
            )
        for name in ("batch_size", "cache_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise RewardConfigError(f"r3.{name}: must be an integer >= {int(name == 'batch_size')}, got {value!r}")

    @classmethod
    def from_kwargs(cls, config: R3Config | None = None, **overrides: Any) -> R3Config:
        """``config`` (default: the defaults) with ``overrides`` applied; unknown names raise RewardConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RewardConfigError(f"r3: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return replace(config or cls(), **overrides)
