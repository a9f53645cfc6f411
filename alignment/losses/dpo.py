"""DPO, Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), sigmoid loss, with cDPO smoothing.

Pure function of the four sequence log-probabilities; :func:`sequence_logps` (from :mod:`.common`) turns logits,
labels and a completion mask into those sums. With ``label_smoothing == 0`` the per-pair loss equals TRL 1.16's
``DPOTrainer`` ``loss_type="sigmoid"`` term (tests/test_losses.py checks it through ``DPOTrainer._compute_loss``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import sequence_logps

__all__ = ["DPOOutput", "dpo_logits", "dpo_loss", "sequence_logps"]


class DPOOutput(NamedTuple):
    """Per-pair DPO outputs, all ``[B]``; ``losses.mean()`` is the batch loss."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_logits(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> torch.Tensor:
    """The DPO margin before ``beta``: ``(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``.

    Args:
        policy_chosen_logps: ``[B]`` summed log-probs of the chosen completions under the policy.
        policy_rejected_logps: ``[B]`` same for the rejected completions.
        ref_chosen_logps: ``[B]`` chosen completions under the reference model.
        ref_rejected_logps: ``[B]`` rejected completions under the reference model.

    Returns:
        ``[B]`` margins.
    """
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> DPOOutput:
    """DPO sigmoid loss (Rafailov et al. 2023, Eq. 7), optionally with conservative DPO label smoothing.

    ``h = beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]``

    ``loss = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)``

    ``eps = label_smoothing`` is cDPO (Mitchell 2023, "A note on DPO with noisy preferences": the label is flipped
    with probability ``eps``); ``eps = 0`` is plain DPO. Note: TRL 1.16's ``"sigmoid"`` ignores
    ``label_smoothing`` (it uses it only for "robust"/"exo_pair"), so the TRL equivalence holds at ``eps = 0``.

    Args:
        policy_chosen_logps: ``[B]`` policy log-probs of the chosen completions, summed over completion tokens.
        policy_rejected_logps: ``[B]`` policy log-probs of the rejected completions.
        ref_chosen_logps: ``[B]`` reference log-probs of the chosen completions (no gradient needed).
        ref_rejected_logps: ``[B]`` reference log-probs of the rejected completions.
        beta: inverse temperature of the implicit reward (TRL default 0.1).
        label_smoothing: cDPO flip probability in ``[0, 0.5]``.

    Returns:
        :class:`DPOOutput` with ``losses [B]``, ``chosen_rewards [B] = beta * (log pi(y_w) - log pi_ref(y_w))`` and
        ``rejected_rewards [B]`` (rewards detached, for logging).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}")
    h = beta * dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    losses = -F.logsigmoid(h)
    if label_smoothing > 0.0:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-h)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return DPOOutput(losses, chosen_rewards, rejected_rewards)
