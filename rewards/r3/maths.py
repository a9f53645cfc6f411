"""The R^3 formulas as pure functions (Kim & Seo, EMNLP 2024, arXiv 2402.03469): word tokens, LI, RP, QR,
RAR, the two reward branches and the query-copy guard. The choices behind them are in :mod:`rewards.r3`."""

from __future__ import annotations

import re

import numpy as np

DEFAULT_SCALE = 5.8
"""s for MiniLM cosines and L_max = 512, by branch parity (see :mod:`rewards.r3`)."""

DEFAULT_MAX_LENGTH = 512
"""L_max, the authors' generation limit in tokens (their ``output_max_length``)."""

# -- word tokens, LI, RP ----------------------------------------------------------------------------------------

_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")


def word_tokens(text: str) -> list[str]:
    """Word tokens as the authors count them: runs of word characters or of punctuation (``wordpunct``)."""
    return _WORDPUNCT.findall(text)


def length_incentive(text: str) -> float:
    """LI (Kim & Seo 2024, Sec. 3): number of word tokens of ``text`` / 100, unbounded."""
    return len(word_tokens(text)) / 100.0


def repetition_penalty(text: str) -> float:
    """RP (Kim & Seo 2024, Sec. 3): distinct word trigrams / all word trigrams of ``text``; 1.0 when it has none.

    In (0, 1]; 1 means no trigram repeats. Tokens are compared as written (case-sensitive), as the authors do.
    """
    tokens = word_tokens(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:], strict=False))
    if not trigrams:
        return 1.0
    return len(set(trigrams)) / len(trigrams)


# -- relevance ----------------------------------------------------------------------------------------------


def query_relevance(query_emb: np.ndarray, response_emb: np.ndarray) -> np.ndarray:
    """QR (Kim & Seo 2024, Sec. 3): row-wise dot product ``e(query_i) . e(response_i)``.

    Args:
        query_emb: [N, d] query embeddings (L2-normalised, so QR is a cosine in [-1, 1]).
        response_emb: [N, d] response embeddings.
    Returns:
        [N] float64.
    """
    if query_emb.shape != response_emb.shape:
        raise ValueError(f"query_emb {query_emb.shape} and response_emb {response_emb.shape} differ in shape")
    return np.einsum("nd,nd->n", query_emb.astype(np.float64), response_emb.astype(np.float64))


def reference_relevance(
    reference_emb: np.ndarray, response_emb: np.ndarray, has_reference: np.ndarray | None = None
) -> np.ndarray:
    """RAR (Kim & Seo 2024, Sec. 3): row-wise dot product ``e(reference_i) . e(response_i)``.

    Args:
        reference_emb: [N, d] reference-answer embeddings (rows without a reference are ignored).
        response_emb: [N, d] response embeddings.
        has_reference: [N] bool, False where row i has no reference; default: all True.
    Returns:
        [N] float64, NaN where there is no reference (the components report those rows as None).
    """
    rar = query_relevance(reference_emb, response_emb)
    if has_reference is not None:
        rar = np.where(np.asarray(has_reference, dtype=bool), rar, np.nan)
    return rar


def open_ended_reward(li: np.ndarray, qr: np.ndarray, rp: np.ndarray) -> np.ndarray:
    """R^3 for open-ended prompts (Kim & Seo 2024, Eq. 2): ``LI * QR * RP``, all [N] -> [N]."""
    return np.asarray(li, dtype=np.float64) * np.asarray(qr, dtype=np.float64) * np.asarray(rp, dtype=np.float64)


def constrained_reward(
    rar: np.ndarray, rp: np.ndarray, scale: float = DEFAULT_SCALE, max_length: int = DEFAULT_MAX_LENGTH
) -> np.ndarray:
    """R^3 for constrained prompts (Kim & Seo 2024, Eq. 3): ``(RAR / s) * (L_max / 100) * RP``, [N] -> [N].

    ``scale`` is s (authors: 3.5 for Contriever; :data:`DEFAULT_SCALE` for MiniLM cosines), ``max_length`` L_max.
    """
    return np.asarray(rar, dtype=np.float64) / scale * (max_length / 100.0) * np.asarray(rp, dtype=np.float64)


# -- query-copy guard --------------------------------------------------------------------------------------


def query_novelty(query: str, response: str) -> float:
    """Share of the response's distinct lower-cased words (``\\w+``) that do not occur in the query, in [0, 1].

    0.0 for a response without words. A restatement of the question scores near 0, an answer near 1.
    """
    response_words = {w.lower() for w in _WORD.findall(response)}
    if not response_words:
        return 0.0
    query_words = {w.lower() for w in _WORD.findall(query)}
    return len(response_words - query_words) / len(response_words)


def copy_guard_factor(novelty: float, qr: float, min_novelty: float, min_similarity: float) -> float:
    """Multiplier in [0, 1] for QR: ``min(1, novelty / min_novelty)`` when ``qr >= min_similarity``, else 1."""
    if qr < min_similarity or novelty >= min_novelty:
        return 1.0
    return max(0.0, novelty / min_novelty)
