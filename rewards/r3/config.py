"""Every option of R^3 in one frozen dataclass, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from rewards.errors import RewardConfigError
from rewards.r3.cleaning import DEFAULT_STOP_STRINGS
from rewards.r3.maths import DEFAULT_MAX_LENGTH, DEFAULT_SCALE, ROBUST_FLOOR
from rewards.r3.retriever import BACKENDS, TRUNCATION_SIDES

BRANCH_RULES: tuple[str, ...] = ("auto", "qtype", "reference", "none")
RESPONSE_ENCODINGS: tuple[str, ...] = ("truncate", "chunked")

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "robust": {"response_encoding": "chunked", "relevance_floor": ROBUST_FLOOR, "copy_guard": True},
}
"""Named starting points for :meth:`R3Config.from_kwargs` (``preset: robust`` in a recipe's ``args``).
"paper": the defaults, the authors' reward as far as it maps onto MiniLM. "robust": the recommended, hack-resistant
R^3: relevance sees the whole response in 64-piece chunks, is measured from the floor 0.3, and the copy guard is on
(see :mod:`rewards.r3` and docs/FIDELITY.md for what each buys, measured)."""


@dataclass(frozen=True)
class R3Config:
    """Every option of R^3; see :mod:`rewards.r3` for what each choice means.

    Attributes:
        use_qr, use_rar, use_li, use_rp: factor switches; a factor switched off is 1.
        scale: s, dividing RAR in the constrained branch (> 0).
        max_length: L_max in tokens; the constrained branch multiplies by L_max / 100 (> 0).
        branch: "auto", "qtype", "reference" or "none": which rows are constrained (none when ``use_rar`` is off).
        qtype_column: dataset column holding the prompt type.
        constrained_values: qtype values (case-insensitive) that mark a row constrained.
        reference_column: dataset column holding the reference answer.
        clean_query: strip chat markup, system prompt and role tags from the query.
        cut_response: cut the response at the first of ``stop_strings``.
        stop_strings: where responses are cut.
        response_encoding: "truncate" (one pass, cut at the retriever's 256 word pieces; the paper) or "chunked"
            (the whole response, in chunks of whole sentences; relevance is the length-weighted mean of the
            chunks' relevances).
        truncation_side: "left" (keep the end, as the authors' Contriever) or "right" (keep the start, as
            sentence-transformers): where a text too long for one pass is cut (queries, references, and responses
            under "truncate").
        chunk_tokens: most word pieces in a chunk under "chunked", in [8, 254].
        relevance_floor: QR is measured from this floor, ``(QR - floor) / (1 - floor)``, in [0, 1); 0: the paper.
        copy_guard: scale QR down for responses that copy the question (off: the paper's reward).
        copy_guard_min_run: consecutive words shared with the query that count as copying (>= 2).
        copy_guard_min_similarity: QR at or above which the guard looks at a response at all, in [-1, 1].
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
    response_encoding: str = "truncate"
    truncation_side: str = "left"
    chunk_tokens: int = 64
    relevance_floor: float = 0.0
    copy_guard: bool = False
    copy_guard_min_run: int = 3
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
        for name, allowed in (("response_encoding", RESPONSE_ENCODINGS), ("truncation_side", TRUNCATION_SIDES)):
            value = getattr(self, name)
            if value not in allowed:
                raise RewardConfigError(f"r3.{name}: {value!r} is not allowed; choose {', '.join(allowed)}")
        chunk = self.chunk_tokens
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 8 <= chunk <= 254:
            raise RewardConfigError(f"r3.chunk_tokens: must be an integer in [8, 254], got {self.chunk_tokens!r}")
        if not _is_number(self.relevance_floor) or not 0 <= self.relevance_floor < 1:
            raise RewardConfigError(f"r3.relevance_floor: must be a number in [0, 1), got {self.relevance_floor!r}")
        run = self.copy_guard_min_run
        if isinstance(run, bool) or not isinstance(run, int) or run < 2:
            raise RewardConfigError(f"r3.copy_guard_min_run: must be an integer >= 2, got {run!r}")
        if not _is_number(self.copy_guard_min_similarity) or not -1 <= self.copy_guard_min_similarity <= 1:
            raise RewardConfigError(
                f"r3.copy_guard_min_similarity: must be in [-1, 1], got {self.copy_guard_min_similarity!r}"
            )
        for name in ("batch_size", "cache_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise RewardConfigError(f"r3.{name}: must be an integer >= {int(name == 'batch_size')}, got {value!r}")

    @classmethod
    def from_kwargs(cls, config: R3Config | None = None, *, preset: str | None = None, **overrides: Any) -> R3Config:
        """``config`` (default: the defaults), or the named ``preset`` (:data:`PRESETS`), with ``overrides`` applied;
        unknown names raise RewardConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise RewardConfigError(
                f"r3: unknown option(s) {', '.join(unknown)}; known: preset, {', '.join(sorted(known))}"
            )
        if preset is not None:
            if config is not None:
                raise RewardConfigError("r3: pass either a config or a preset, not both")
            if preset not in PRESETS:
                raise RewardConfigError(f"r3.preset: {preset!r} is not a preset; choose {', '.join(PRESETS)}")
            config = cls(**PRESETS[preset])
        return replace(config or cls(), **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> R3Config:
        """The options of preset ``name`` ("paper" or "robust"), with ``overrides`` applied."""
        return cls.from_kwargs(preset=name, **overrides)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
