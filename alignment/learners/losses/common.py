"""Shared tensor helpers for the preference losses: per-token log-probs, masked reductions, causal shift.

Conventions used by every loss module in :mod:`alignment.losses`:

- ``B`` is the number of preference pairs, ``T`` the (padded, already shifted) completion length, ``V`` the
  vocabulary size.
- Per-token tensors ``[B, T]`` are *aligned*: position ``t`` holds the quantity for the token ``labels[:, t]``
  predicted by ``logits[:, t]``. For a causal LM whose logits come from ``input_ids`` use
  :func:`shift_for_causal_lm` first (it drops the last logit and the first label, as TRL's fused head does).
- A ``mask`` ``[B, T]`` is 1 on completion tokens that count and 0 on prompt and padding; any dtype is accepted
  (bool, int, float) and it is cast to the values' dtype.
- Every loss takes keyword-only arguments, and what comes per side of a pair comes as a :class:`ChosenRejected`
  (``ChosenRejected(chosen=..., rejected=...)``), so that policy and reference, or chosen and rejected, cannot be
  swapped silently by position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

IGNORE_INDEX = -100


class ChosenRejected(NamedTuple):
    """One quantity for both completions of each preference pair: ``chosen`` (y_w) and ``rejected`` (y_l).

    The shapes are the loss's to state (``[B]`` sequence sums, ``[B, T]`` per-token values; the two sides may have
    different ``T``). Build it with names: ``ChosenRejected(chosen=policy_w, rejected=policy_l)``.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor


def split_pairs(stacked: torch.Tensor) -> ChosenRejected:
    """Split a batch that stacks the chosen completions over the rejected ones (``[2B, ...]``, TRL's preference
    collator layout) into its two halves ``[B, ...]``."""
    if stacked.size(0) % 2:
        raise ValueError(f"expected chosen stacked over rejected ([2B, ...]), got batch size {stacked.size(0)}")
    chosen, rejected = stacked.chunk(2)
    return ChosenRejected(chosen=chosen, rejected=rejected)


def shift_for_causal_lm(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align a causal LM's outputs with its next-token targets.

    Args:
        logits: ``[B, L, V]`` logits of the model run on ``input_ids`` (position ``i`` predicts token ``i + 1``).
        input_ids: ``[B, L]`` prompt + completion token ids.
        completion_mask: ``[B, L]`` 1 on completion tokens, 0 on prompt and padding.

    Returns:
        ``(logits[:, :-1] [B, L-1, V], labels [B, L-1], mask [B, L-1])`` with ``labels = input_ids[:, 1:]`` and
        ``mask = completion_mask[:, 1:]``: the same layout as TRL 1.16's ``DPOTrainer`` (``shift_completion_mask``).
    """
    return logits[:, :-1], input_ids[:, 1:], completion_mask[:, 1:]


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Log-probability of each label under the softmax of its logits.

    Computed as ``logits[label] - logsumexp(logits)`` so no ``[B, T, V]`` log-softmax tensor is materialised.

    Args:
        logits: ``[B, T, V]`` aligned logits (see the module docstring).
        labels: ``[B, T]`` target token ids; positions equal to ``ignore_index`` get log-prob 0.
        ignore_index: label value marking positions without a target.

    Returns:
        ``[B, T]`` per-token log-probs ``log pi(labels_t | .)`` in the logits' dtype (float32 or wider kept).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")
    valid = labels != ignore_index
    safe_labels = labels.masked_fill(~valid, 0)
    picked = torch.gather(logits, dim=-1, index=safe_labels.unsqueeze(-1)).squeeze(-1)
    logps = picked - torch.logsumexp(logits, dim=-1)
    return logps.masked_fill(~valid, 0.0)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum of ``values`` over ``dim`` where ``mask`` is non-zero.

    Args:
        values: ``[B, T]`` (or any shape broadcastable with ``mask``).
        mask: ``[B, T]`` 0/1 (bool, int or float; a float mask acts as a weight).
        dim: dimension to reduce.

    Returns:
        ``[B]`` masked sums.
    """
    return (values * mask.to(values.dtype)).sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = -1) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is non-zero.

    Args:
        values: ``[B, T]``.
        mask: ``[B, T]`` 0/1.
        dim: dimension to reduce, or ``None`` to pool every valid position of the batch into one mean.

    Returns:
        ``[B]`` per-row means (``dim=-1``) or a scalar (``dim=None``). Rows without a valid position give 0
        (the count is clamped to 1).
    """
    m = mask.to(values.dtype)
    if dim is None:
        return (values * m).sum() / m.sum().clamp(min=1.0)
    return (values * m).sum(dim=dim) / m.sum(dim=dim).clamp(min=1.0)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Sequence log-probability: the sum of per-token label log-probs over the masked (completion) tokens.

    This is the ``log pi(y | x)`` of DPO (Rafailov et al. 2023, arXiv 2305.18290): summed, not averaged, over
    completion tokens, as in TRL 1.16's ``DPOTrainer`` (``per_token_logps.sum(dim=1)``).

    Args:
        logits: ``[B, T, V]`` aligned logits (apply :func:`shift_for_causal_lm` to raw causal-LM outputs first).
        labels: ``[B, T]`` aligned target ids (``ignore_index`` allowed on masked positions).
        mask: ``[B, T]`` 1 on completion tokens.
        ignore_index: label value marking positions without a target.

    Returns:
        ``[B]`` summed log-probs.
    """
    return masked_sum(token_logps(logits, labels, ignore_index), mask)
