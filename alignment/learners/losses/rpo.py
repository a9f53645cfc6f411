"""RPO, Regularized Preference Optimization (Liu et al. 2024, arXiv 2405.16436): DPO plus an SFT term on y_w.

``L = L_DPO + eta * SFT(chosen)``; the SFT term comes in three selectable forms (``version``):

- ``"sum"`` (the authors' main recipe; beta 0.01, eta 0.005 on UltraFeedback):
  ``loss_i = L_DPO_i - eta * beta * sum_t log pi(y_w,t)``; the SFT term is a token *sum*, scaled by beta.
- ``"mean"`` (the authors' length-normalised variant; eta 0.2, beta 0.5):
  ``loss_i = L_DPO_i + eta * ( -(1/|y_w_i|) sum_t log pi(y_w,t) )``; its batch mean is
  ``mean_batch(L_DPO) + eta * mean_batch(per-sequence token-mean NLL)``.
- ``"trl_sft"`` (NOT the paper above: the recipe of Pang et al. 2024, arXiv 2404.19733, that TRL shipped as
  ``rpo_alpha`` and now as ``loss_type=["sigmoid", "sft"], loss_weights=[1, eta]``): the NLL is a token mean
  *pooled over the whole batch*, ``-sum_{i,t} log pi(y_w,i,t) / sum_i |y_w_i|``, so long chosen completions weigh
  more than in ``"mean"``. The same scalar is added to every pair so that ``losses.mean()`` equals TRL's loss.

All three versions add the same DPO term (:func:`alignment.losses.dpo.dpo_loss`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from .common import ChosenRejected, masked_mean, masked_sum
from .dpo import dpo_loss

__all__ = ["RPO_VERSIONS", "RPOOutput", "rpo_loss", "rpo_regularizer"]

RPOVersion = Literal["sum", "mean", "trl_sft"]
RPO_VERSIONS: tuple[str, ...] = ("sum", "mean", "trl_sft")


class RPOOutput(NamedTuple):
    """Per-pair RPO outputs, all ``[B]``; ``losses.mean()`` is the batch loss.

    ``regularizer`` is the SFT term before ``eta`` (``-beta * sum_t log pi`` for ``"sum"``, the per-sequence mean
    NLL for ``"mean"``, the batch-pooled NLL repeated B times for ``"trl_sft"``); ``dpo_losses`` the DPO part.
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    dpo_losses: torch.Tensor
    regularizer: torch.Tensor


def rpo_regularizer(
    *, chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor, beta: float, version: RPOVersion
) -> torch.Tensor:
    """The SFT term of RPO on the chosen completions, before the ``eta`` factor.

    Args:
        chosen_token_logps: ``[B, T]`` policy per-token log-probs ``log pi(y_w,t | x, y_w,<t)`` (aligned).
        chosen_mask: ``[B, T]`` 1 on chosen-completion tokens.
        beta: the DPO beta (used by ``"sum"`` only).
        version: ``"sum"``, ``"mean"`` or ``"trl_sft"`` (see the module docstring).

    Returns:
        ``[B]`` regulariser per pair (``"trl_sft"``: one pooled scalar expanded to ``[B]``).
    """
    if version == "sum":
        return -beta * masked_sum(chosen_token_logps, chosen_mask)
    if version == "mean":
        return -masked_mean(chosen_token_logps, chosen_mask, dim=-1)
    if version == "trl_sft":
        pooled = -masked_mean(chosen_token_logps, chosen_mask, dim=None)
        return pooled.expand(chosen_token_logps.size(0))
    raise ValueError(f"unknown RPO version {version!r}; expected one of {RPO_VERSIONS}")


def rpo_loss(
    *,
    policy: ChosenRejected,
    reference: ChosenRejected,
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    beta: float,
    eta: float,
    version: RPOVersion = "sum",
    label_smoothing: float = 0.0,
) -> RPOOutput:
    """RPO loss: DPO plus ``eta`` times an SFT term on the chosen completion (Liu et al. 2024, arXiv 2405.16436).

    Args:
        policy: ``[B]`` policy log-probs of the chosen / rejected completions, summed over tokens.
        reference: ``[B]`` reference log-probs of the chosen / rejected completions.
        chosen_token_logps: ``[B, T]`` policy per-token log-probs of the chosen completions (with gradient).
        chosen_mask: ``[B, T]`` 1 on chosen-completion tokens.
        beta: DPO beta (authors: 0.01 for ``"sum"``, 0.5 for ``"mean"``).
        eta: weight of the SFT term (authors: 0.005 for ``"sum"``, 0.2 for ``"mean"``; TRL's ``rpo_alpha`` for
            ``"trl_sft"``).
        version: ``"sum"`` | ``"mean"`` | ``"trl_sft"``; see the module docstring for the exact formulas.
        label_smoothing: cDPO smoothing of the DPO part (0 in all three recipes).

    Returns:
        :class:`RPOOutput` with ``losses [B]``, detached ``chosen_rewards``/``rejected_rewards [B]``, the DPO part
        ``dpo_losses [B]`` and the un-weighted ``regularizer [B]``.
    """
    if version not in RPO_VERSIONS:
        raise ValueError(f"unknown RPO version {version!r}; expected one of {RPO_VERSIONS}")
    dpo = dpo_loss(policy=policy, reference=reference, beta=beta, label_smoothing=label_smoothing)
    reg = rpo_regularizer(chosen_token_logps=chosen_token_logps, chosen_mask=chosen_mask, beta=beta, version=version)
    return RPOOutput(dpo.losses + eta * reg, dpo.chosen_rewards, dpo.rejected_rewards, dpo.losses, reg)
