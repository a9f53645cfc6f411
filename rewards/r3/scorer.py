"""Batch scoring for R^3: every factor of a batch computed once, memoised and shared by the components."""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rewards.errors import RewardConfigError
from rewards.r3.cleaning import clean_query, cut_response
from rewards.r3.config import R3Config
from rewards.r3.maths import (
    constrained_reward,
    copy_guard_factor,
    floored_relevance,
    length_incentive,
    open_ended_reward,
    query_relevance,
    repetition_penalty,
    strip_copied,
    word_tokens,
)
from rewards.r3.retriever import Retriever, get_retriever
from rewards.text import completion_text, prompt_text


@dataclass
class R3Factors:
    """Every factor of one batch of N rows, switches, copy guard and floor applied (a factor switched off is 1).

    Attributes:
        query: [N] cleaned queries.  response: [N] cut responses.  reference: [N] references or None.
        constrained: [N] bool, the rows scored by the constrained branch.
        li, rp: [N] LI and RP.  copied: [N] share of each response's words copied from its query (copy guard).
        qr: [N] QR as the reward uses it (guarded, then measured from the floor); None until relevance is computed.
        qr_unguarded: [N] the retriever's QR, before guard and floor.  rar: [N] RAR, NaN where there is no reference.
    """

    query: list[str]
    response: list[str]
    reference: list[str | None]
    constrained: np.ndarray
    li: np.ndarray
    rp: np.ndarray
    copied: np.ndarray
    qr: np.ndarray | None = None
    qr_unguarded: np.ndarray | None = None
    rar: np.ndarray | None = None

    def reward(self, config: R3Config) -> np.ndarray:
        """[N] R^3: ``(RAR / s) * (L_max / 100) * RP`` on constrained rows, ``LI * QR * RP`` on the rest."""
        if self.qr is None or self.rar is None:
            raise ValueError("relevance factors were not computed for this batch")
        open_r = open_ended_reward(self.li, self.qr, self.rp)
        rar = np.where(self.constrained, self.rar, 0.0)
        constrained_r = constrained_reward(rar, self.rp, config.scale, config.max_length)
        return np.where(self.constrained, constrained_r, open_r)


def _reference_or_none(value: Any) -> str | None:
    """A reference cell as text, or None when it is missing, NaN or blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = value if isinstance(value, str) else completion_text(value)
    return text if text.strip() else None


def _column(columns: dict[str, Sequence[Any]], name: str, n: int) -> list[Any] | None:
    """Column ``name`` as a list of length n, or None when the batch does not carry it."""
    values = columns.get(name)
    if values is None:
        return None
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} rows, the batch has {n}")
    return values


class R3Scorer:
    """Computes :class:`R3Factors` for batches; shared by the R^3 components so a batch is scored once.

    The last batch's factors are memoised (the composer calls r3, r3.qr, r3.rar, ... on the same batch);
    prompt and reference embeddings go through the retriever's LRU cache, responses are encoded once per batch.

    Args:
        config: options (default :class:`R3Config`).
        retriever: the encoder; default: :func:`rewards.r3.retriever.get_retriever` for ``config.backend``, built
            on first need (LI and RP alone never load it).
    """

    def __init__(self, config: R3Config | None = None, retriever: Retriever | None = None) -> None:
        self.config = config or R3Config()
        self._retriever = retriever
        self._memo_key: tuple[Any, ...] | None = None
        self._memo: R3Factors | None = None
        self._lock = threading.RLock()
        self._warned_missing_reference = False

    @property
    def retriever(self) -> Retriever:
        """The retriever, loaded on first use."""
        if self._retriever is None:
            self._retriever = get_retriever(
                self.config.backend, batch_size=self.config.batch_size, cache_size=self.config.cache_size
            )
        return self._retriever

    def factors(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        columns: dict[str, Sequence[Any]] | None = None,
        *,
        relevance: bool = True,
    ) -> R3Factors:
        """Factors of N (prompt, completion) rows; ``columns`` are the batch's extra dataset columns (reference,
        qtype, ...). With ``relevance=False`` QR and RAR are left uncomputed (no retriever needed)."""
        cfg = self.config
        columns = columns or {}
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        queries = [clean_query(prompt_text(p)) if cfg.clean_query else prompt_text(p) for p in prompts]
        responses = [
            cut_response(completion_text(c), cfg.stop_strings) if cfg.cut_response else completion_text(c)
            for c in completions
        ]
        ref_col = _column(columns, cfg.reference_column, n)
        references = [_reference_or_none(v) for v in ref_col] if ref_col is not None else [None] * n
        constrained = self._constrained(references, _column(columns, cfg.qtype_column, n))
        key = (tuple(queries), tuple(responses), tuple(references), tuple(constrained.tolist()))
        with self._lock:
            if key != self._memo_key or self._memo is None:
                self._memo_key = key
                self._memo = R3Factors(
                    query=queries,
                    response=responses,
                    reference=references,
                    constrained=constrained,
                    li=np.array([length_incentive(r) if cfg.use_li else 1.0 for r in responses], dtype=np.float64),
                    rp=np.array([repetition_penalty(r) if cfg.use_rp else 1.0 for r in responses], dtype=np.float64),
                    copied=np.array(
                        [strip_copied(q, r, cfg.copy_guard_min_run)[1] for q, r in zip(queries, responses, strict=True)]
                    ),
                )
            factors = self._memo
            if relevance and factors.qr is None:
                self._relevance(factors)
            return factors

    def _constrained(self, references: list[str | None], qtypes: list[Any] | None) -> np.ndarray:
        """[N] bool: rows scored by the constrained branch under ``config.branch``."""
        cfg = self.config
        has_ref = np.array([r is not None for r in references], dtype=bool)
        if cfg.branch == "none" or not cfg.use_rar:
            # the constrained branch is RAR's; without it every row is LI * QR * RP (the authors without relevance
            # scaling: LI * RP on every row)
            return np.zeros(len(references), dtype=bool)
        if cfg.branch == "reference" or (cfg.branch == "auto" and qtypes is None):
            return has_ref
        if qtypes is None:
            raise RewardConfigError(f"r3.branch='qtype' needs the column {cfg.qtype_column!r} in the batch")
        wanted = {v.strip().lower() for v in cfg.constrained_values}
        flagged = np.array([isinstance(q, str) and q.strip().lower() in wanted for q in qtypes], dtype=bool)
        if (flagged & ~has_ref).any() and not self._warned_missing_reference:
            self._warned_missing_reference = True
            warnings.warn(
                f"r3: rows flagged constrained by {cfg.qtype_column!r} have no {cfg.reference_column!r}; "
                "they are scored open-ended",
                stacklevel=3,
            )
        return flagged & has_ref

    def _relevance(self, factors: R3Factors) -> None:
        """Fill ``factors.qr``, ``qr_unguarded`` and ``rar`` (needs the retriever unless both are switched off)."""
        cfg = self.config
        n = len(factors.response)
        has_ref = np.array([r is not None for r in factors.reference], dtype=bool)
        nonempty = np.array([bool(r) for r in factors.response], dtype=bool)
        qr = np.ones(n)
        rar = np.where(has_ref, 1.0, np.nan)
        if cfg.use_qr or (cfg.use_rar and has_ref.any()):
            response_emb = self._encode_responses(factors.response)
            if cfg.use_qr:
                query_emb = self.retriever.encode(factors.query, cache=True, truncation_side=cfg.truncation_side)
                qr = np.where(nonempty, query_relevance(query_emb, response_emb), 0.0)
            if cfg.use_rar and has_ref.any():
                rows = np.flatnonzero(has_ref)
                ref_emb = self.retriever.encode(
                    [factors.reference[i] for i in rows], cache=True, truncation_side=cfg.truncation_side
                )
                rar[rows] = np.where(nonempty[rows], query_relevance(ref_emb, response_emb[rows]), 0.0)
        factors.qr_unguarded = qr
        if cfg.use_qr:
            if cfg.copy_guard:
                qr = qr * self._copy_guard(factors, qr)
            if cfg.relevance_floor:
                qr = floored_relevance(qr, cfg.relevance_floor)
        factors.qr = qr
        factors.rar = rar

    def _encode_responses(self, responses: list[str]) -> np.ndarray:
        """[N, d] response embeddings: one truncated pass each ("truncate"), or the length-weighted mean of the
        whole response's chunk embeddings ("chunked"; not renormalised, so its dot product with a query is the
        chunks' relevances averaged by their word tokens, and ``LI * QR`` is the sum of each chunk's ``LI * QR``)."""
        cfg = self.config
        if cfg.response_encoding == "truncate":
            return self.retriever.encode(responses, truncation_side=cfg.truncation_side)
        chunks = self.retriever.encode_chunks(responses, max_tokens=cfg.chunk_tokens)
        weights = np.array([len(word_tokens(text)) for text in chunks.chunk_texts()], dtype=np.float64)
        return chunks.pooled(weights)

    def _copy_guard(self, factors: R3Factors, qr: np.ndarray) -> np.ndarray:
        """[N] copy-guard factors: for a response that copies words from its query and has QR >= the guard's
        similarity, :func:`copy_guard_factor` of its QR and the QR of what it adds; 1 elsewhere."""
        cfg = self.config
        factor = np.ones(len(qr))
        rows = [
            i
            for i in range(len(qr))
            if factors.copied[i] > 0 and factors.response[i] and qr[i] >= cfg.copy_guard_min_similarity
        ]
        if not rows:
            return factor
        rests = [strip_copied(factors.query[i], factors.response[i], cfg.copy_guard_min_run)[0] for i in rows]
        has_words = [any(ch.isalnum() for ch in rest) for rest in rests]
        encode_rows = [i for i, keep in zip(rows, has_words, strict=True) if keep]
        qr_rest = dict.fromkeys(rows, 0.0)
        if encode_rows:
            rest_emb = self._encode_responses([r for r, keep in zip(rests, has_words, strict=True) if keep])
            query_emb = self.retriever.encode(
                [factors.query[i] for i in encode_rows], cache=True, truncation_side=cfg.truncation_side
            )
            qr_rest.update(zip(encode_rows, query_relevance(query_emb, rest_emb).tolist(), strict=True))
        for i in rows:
            factor[i] = copy_guard_factor(float(qr[i]), qr_rest[i])
        return factor


_SCORERS: dict[R3Config, R3Scorer] = {}
_SCORERS_LOCK = threading.Lock()


def shared_scorer(config: R3Config | None = None) -> R3Scorer:
    """The process-wide :class:`R3Scorer` for ``config``: components built with equal options (as the registry
    builds them, one by one) share it, and with it the memo of the last batch."""
    config = config or R3Config()
    with _SCORERS_LOCK:
        scorer = _SCORERS.get(config)
        if scorer is None:
            scorer = _SCORERS[config] = R3Scorer(config)
        return scorer
