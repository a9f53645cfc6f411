"""DPO, Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), sigmoid loss, with cDPO smoothing.

Pure function of the sequence log-probabilities of policy and reference on both completions;
:func:`sequence_logps` (from :mod:`.common`) turns logits,
labels and a completion mask into those sums. With ``label_smoothing == 0`` the per-pair loss equals TRL 1.16's
``DPOTrainer`` ``loss_type="sigmoid"`` term (tests/test_losses.py checks it through ``DPOTrainer._compute_loss``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .common import ChosenRejected, sequence_logps

__all__ = ["ChosenRejected", "DPOOutput", "dpo_logits", "dpo_loss", "sequence_logps"]


class DPOOutput(NamedTuple):
    """Per-pair DPO outputs, all ``[B]``; ``losses.mean()`` is the batch loss."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_logits(*, policy: ChosenRejected, reference: ChosenRejected) -> torch.Tensor:
    """The DPO margin before ``beta``: ``(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))``.

    Args:
        policy: ``[B]`` summed log-probs of the chosen / rejected completions under the policy.
        reference: the same under the reference model.

    Returns:
        ``[B]`` margins.
    """
    return (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)


def dpo_loss(
    *, policy: ChosenRejected, reference: ChosenRejected, beta: float, label_smoothing: float = 0.0
) -> DPOOutput:
    """DPO sigmoid loss (Rafailov et al. 2023, Eq. 7), optionally with conservative DPO label smoothing.

    ``h = beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))]``

    ``loss = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)``

    ``eps = label_smoothing`` is cDPO (Mitchell 2023, "A note on DPO with noisy preferences": the label is flipped
    with probability ``eps``); ``eps = 0`` is plain DPO. Note: TRL 1.16's ``"sigmoid"`` ignores
    ``label_smoothing`` (it uses it only for "robust"/"exo_pair"), so the TRL equivalence holds at ``eps = 0``.

    Args:
        policy: ``[B]`` policy log-probs of the chosen / rejected completions, summed over completion tokens.
        reference: ``[B]`` reference log-probs of the chosen / rejected completions (no gradient needed).
        beta: inverse temperature of the implicit reward (TRL default 0.1).
        label_smoothing: cDPO flip probability in ``[0, 0.5]``.

    Returns:
        :class:`DPOOutput` with ``losses [B]``, ``chosen_rewards [B] = beta * (log pi(y_w) - log pi_ref(y_w))`` and
        ``rejected_rewards [B]`` (rewards detached, for logging).
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5], got {label_smoothing}")
    h = beta * dpo_logits(policy=policy, reference=reference)
    losses = -F.logsigmoid(h)
    if label_smoothing > 0.0:
        losses = (1.0 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-h)
    chosen_rewards = beta * (policy.chosen - reference.chosen).detach()
    rejected_rewards = beta * (policy.rejected - reference.rejected).detach()
    return DPOOutput(losses, chosen_rewards, rejected_rewards)
