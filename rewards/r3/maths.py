"""The R^3 formulas as pure functions (Kim & Seo, EMNLP 2024, arXiv 2402.03469): word tokens, LI, RP, QR,
RAR, the two reward branches, and this port's two extensions: the relevance floor and the query-copy guard.
The choices behind them are in :mod:`rewards.r3`."""

from __future__ import annotations

import re

import numpy as np

DEFAULT_SCALE = 5.8
"""s for MiniLM cosines and L_max = 512, by branch parity (see :mod:`rewards.r3`)."""

DEFAULT_MAX_LENGTH = 512
"""L_max, the authors' generation limit in tokens (their ``output_max_length``)."""

ROBUST_FLOOR = 0.3
"""The relevance floor of the robust preset: above ~98% of the MiniLM cosines between a question and a sentence on
another subject, below every on-topic sentence (``bench/bench_r3.py --derive-floor``; see :mod:`rewards.r3`)."""

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


def floored_relevance(relevance: np.ndarray, floor: float) -> np.ndarray:
    """Relevance measured from a floor: ``(x - floor) / (1 - floor)``, [N] -> [N] (an extension, not the paper's).

    1 stays 1, ``floor`` becomes 0 and anything less relevant is negative, so in ``LI * QR * RP`` text less
    relevant than the floor lowers the reward the longer it is. ``floor`` = 0 is the identity (the paper).
    """
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor!r}")
    return (np.asarray(relevance, dtype=np.float64) - floor) / (1.0 - floor)


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


def strip_copied(query: str, response: str, min_run: int = 3) -> tuple[str, float]:
    """``response`` without the words it copies from ``query``, and the share of its words that were copied.

    Words are lower-cased ``\\w+`` runs. A response word is copied when it lies in a run of ``min_run``
    consecutive words (fewer if the query has fewer) that also occur consecutively in the query; a response made
    only of the query's words is copied whole. Single shared words (the question's key words) are never copied.
    Returns (the response with copied words cut out, punctuation and the rest kept; copied words / all words),
    ``("", 0.0)`` for a response without words.
    """
    matches = list(_WORD.finditer(response))
    words = [m.group(0).lower() for m in matches]
    if not words:
        return "", 0.0
    query_words = [w.lower() for w in _WORD.findall(query)]
    if not query_words:
        return response, 0.0
    if set(words) <= set(query_words):
        return "", 1.0
    run = min(min_run, len(query_words))
    grams = {tuple(query_words[i : i + run]) for i in range(len(query_words) - run + 1)}
    copied = [False] * len(words)
    for i in range(len(words) - run + 1):
        if tuple(words[i : i + run]) in grams:
            copied[i : i + run] = [True] * run
    if not any(copied):
        return response, 0.0
    pieces, cursor = [], 0
    for match, is_copied in zip(matches, copied, strict=True):
        if is_copied:
            pieces.append(response[cursor : match.start()])
            cursor = match.end()
    pieces.append(response[cursor:])
    return "".join(pieces), sum(copied) / len(words)


def copy_guard_factor(qr: float, qr_rest: float) -> float:
    """Multiplier in [0, 1] for the QR of a response that copies words from the query.

    ``qr_rest`` is the relevance of what the response adds (the response without its copied words,
    :func:`strip_copied`); with ``rho = clip(qr_rest / qr, 0, 1)`` the factor is ``rho * (2 - rho)``: 1 when the
    rest is as relevant as the whole (an answer that restates a phrase of the question), 0 when nothing relevant
    is left (an echo), smooth in between (rho 0.5 -> 0.75, rho 0.1 -> 0.19). 1 when ``qr`` <= 0.
    """
    if qr <= 0:
        return 1.0
    rho = min(1.0, max(0.0, qr_rest / qr))
    return rho * (2.0 - rho)
