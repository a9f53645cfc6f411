"""SparsePO (Christopoulou et al. 2024, arXiv 2410.05102; code: huawei-noah/HEBO, folder SparsePO).

Token-weighted preference optimisation: a reward mask ``mu`` and a KL mask ``md`` decide which tokens of the
chosen (``w``) and rejected (``l``) completions carry the implicit reward and the token-level KL.

Per token (all ``[B, T]``, aligned, see :mod:`.common`):

- ``l_t = log pi(y_t | .) - log pi_ref(y_t | .)``
- ``KL_t = sum_v pi_ref(v | .) (log pi_ref(v | .) - log pi(v | .))`` (:func:`token_kl`, >= 0)

Per pair (sums over valid tokens, no length normalisation):

- ``U = sum_t mu_w,t l_t(y_w) - sum_t mu_l,t l_t(y_l)``
- ``D = sum_t md_l,t KL_t(y_l) - sum_t md_w,t KL_t(y_w)``
- ``L = -log sigmoid(beta (U - D)) + lambda_u (|mu_w|_1 + |mu_l|_1) + lambda_d (|md_w|_1 + |md_l|_1)``

The authors' code writes the KL with the opposite sign (``sum_v p_ref (log p - log p_ref)``) and subtracts
chosen minus rejected; the two forms are identical. With all masks 1 and the KL term dropped, ``U`` is the DPO
logit and the loss is DPO's (tested).

Masks come from :class:`SparseMaskHead` (learned, "sparse") or :func:`activation_mask` (reference activations,
"mapo"; same mask for both terms, no L1 penalty).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import ChosenRejected, masked_sum

__all__ = [
    "ChosenRejected",
    "MaskHeadOutput",
    "SparseMaskHead",
    "SparsePOOutput",
    "activation_mask",
    "mask_stats",
    "sparsepo_loss",
    "token_kl",
]


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi_ref || pi) over the full vocabulary.

    ``KL_t = sum_v pi_ref(v) (log pi_ref(v) - log pi(v))``, computed with log-softmax in float32 (or wider).

    Args:
        policy_logits: ``[B, T, V]`` aligned policy logits (gradient flows through these).
        ref_logits: ``[B, T, V]`` aligned reference logits (usually produced under ``torch.no_grad``).

    Returns:
        ``[B, T]`` non-negative KL per position (padding positions are computed too; mask them downstream).
    """
    if policy_logits.shape != ref_logits.shape:
        raise ValueError(f"policy {tuple(policy_logits.shape)} and ref {tuple(ref_logits.shape)} logits differ")
    dtype = torch.promote_types(policy_logits.dtype, torch.float32)
    logp = F.log_softmax(policy_logits.to(dtype), dim=-1)
    logq = F.log_softmax(ref_logits.to(dtype), dim=-1)
    return (logq.exp() * (logq - logp)).sum(dim=-1)


class SparsePOOutput(NamedTuple):
    """Per-pair SparsePO outputs, all ``[B]``; ``losses.mean()`` is the batch loss.

    ``chosen_rewards = beta * sum_t mu_w,t l_t(y_w)`` and ``rejected_rewards = beta * sum_t mu_l,t l_t(y_l)``:
    the masked implicit rewards (detached, for logging), equal to DPO's rewards when the masks are 1, so
    ``chosen_rewards - rejected_rewards = beta * U``. The loss's logit is ``beta * (u - d)``. (The authors' code
    logs ``beta * (sum mu l - sum md KL)`` per side instead, whose margin is ``beta * (U + D)``: neither the
    reward nor the loss's logit.) ``l1`` is the penalty added (already multiplied by the lambdas).
    """

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    u: torch.Tensor
    d: torch.Tensor
    l1: torch.Tensor


def _l1(m: torch.Tensor | None, valid: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``[B]`` L1 norm of a mask over the valid tokens; a fixed (``None``) mask is not penalised."""
    return zero if m is None else masked_sum(m.abs(), valid)


def sparsepo_loss(
    *,
    policy_token_logps: ChosenRejected,
    reference_token_logps: ChosenRejected,
    completion_mask: ChosenRejected,
    token_kl: ChosenRejected | None,
    reward_mask: ChosenRejected | None,
    kl_mask: ChosenRejected | None,
    beta: float,
    lambda_u: float = 0.0,
    lambda_d: float = 0.0,
    shared_mask: bool = False,
) -> SparsePOOutput:
    """SparsePO loss (Christopoulou et al. 2024, arXiv 2410.05102), formulas in the module docstring.

    Every pair argument holds the chosen side ``[B, T]`` and the rejected side ``[B, T']``.

    Args:
        policy_token_logps: policy per-token log-probs of the chosen / rejected completions.
        reference_token_logps: reference per-token log-probs of the chosen / rejected completions.
        completion_mask: 1 on valid completion tokens (every sum and L1 norm runs over these only).
        token_kl: :func:`token_kl` on each completion, or ``None`` to drop the KL term (``D = 0``; ``kl_mask`` and
            ``lambda_d`` are then unused).
        reward_mask: the reward masks ``mu_w`` / ``mu_l`` (non-negative), or ``None`` for fixed all-ones masks (not
            learned, so no L1 penalty).
        kl_mask: the KL masks ``md_w`` / ``md_l``, or ``None``: all ones when ``shared_mask`` is False (unweighted
            token KL, no L1), the reward masks when it is True.
        beta: inverse temperature (authors: 0.1 dialogue to 0.8 sentiment, summarisation, code).
        lambda_u: L1 weight on the reward masks.
        lambda_d: L1 weight on the KL masks.
        shared_mask: one mask for both terms (``md = mu``). Following SPECS section 4, the two L1 weights are then
            halved: the penalty is ``(lambda_u / 2 + lambda_d / 2) (|mu_w|_1 + |mu_l|_1)``, so a shared mask with
            ``lambda_u = lambda_d = lambda`` is penalised once with ``lambda`` rather than twice. ``kl_mask`` must
            then be ``None`` or equal to ``reward_mask``. When the KL term is dropped (``token_kl = None``) the
            penalty is ``lambda_u (|mu_w|_1 + |mu_l|_1)`` whatever ``shared_mask`` says.

    Returns:
        :class:`SparsePOOutput` (``losses``, ``chosen_rewards``, ``rejected_rewards``, ``u``, ``d``, ``l1``), each
        ``[B]``.
    """
    mask_w, mask_l = completion_mask
    mu_w, mu_l = reward_mask if reward_mask is not None else (None, None)
    md_w, md_l = kl_mask if kl_mask is not None else (None, None)
    if shared_mask:
        for md, mu, name in ((md_w, mu_w, "kl_mask.chosen"), (md_l, mu_l, "kl_mask.rejected")):
            if md is not None and (mu is None or md.shape != mu.shape or not torch.equal(md, mu)):
                raise ValueError(f"shared_mask=True: {name} must be None or equal to the reward mask")
        md_w, md_l = mu_w, mu_l

    lw = policy_token_logps.chosen - reference_token_logps.chosen
    ll = policy_token_logps.rejected - reference_token_logps.rejected
    rw = masked_sum(lw if mu_w is None else mu_w * lw, mask_w)
    rl = masked_sum(ll if mu_l is None else mu_l * ll, mask_l)
    u = rw - rl

    zero = torch.zeros_like(u)
    if token_kl is not None:
        kl_w, kl_l = token_kl
        dw = masked_sum(kl_w if md_w is None else md_w * kl_w, mask_w)
        dl = masked_sum(kl_l if md_l is None else md_l * kl_l, mask_l)
    else:
        dw, dl = zero, zero
    d = dl - dw

    l1_u = _l1(mu_w, mask_w, zero) + _l1(mu_l, mask_l, zero)
    if token_kl is None:
        l1 = lambda_u * l1_u  # no KL term, so no KL mask to penalise (and nothing to halve)
    elif shared_mask:
        l1 = 0.5 * (lambda_u + lambda_d) * l1_u
    else:
        l1 = lambda_u * l1_u + lambda_d * (_l1(md_w, mask_w, zero) + _l1(md_l, mask_l, zero))

    losses = -F.logsigmoid(beta * (u - d)) + l1
    chosen_rewards = beta * rw.detach()
    rejected_rewards = beta * rl.detach()
    return SparsePOOutput(losses, chosen_rewards, rejected_rewards, u, d, l1)


class MaskHeadOutput(NamedTuple):
    """Masks from :class:`SparseMaskHead`: ``reward_mask`` ``[B, T]``; ``kl_mask`` ``[B, T]`` or ``None``."""

    reward_mask: torch.Tensor
    kl_mask: torch.Tensor | None


class _MaskBranch(nn.Module):
    """One mask: per layer LayerNorm -> Linear(d, 1) -> ReLU -> dropout; Linear(L, 1, no bias) -> ReLU -> dropout."""

    def __init__(
        self, num_layers: int, hidden: int, dropout: float, shared_layer_norm: bool, eps: float, init_std: float | None
    ) -> None:
        super().__init__()
        self.shared_layer_norm = shared_layer_norm
        n_norms = 1 if shared_layer_norm else num_layers
        self.norms = nn.ModuleList([nn.LayerNorm(hidden, eps=eps) for _ in range(n_norms)])
        self.per_layer = nn.ModuleList([nn.Linear(hidden, 1) for _ in range(num_layers)])
        self.mixer = nn.Linear(num_layers, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        if init_std is not None:  # as a Hugging Face model's _init_weights: N(0, std) weights, zero biases
            for linear in (*self.per_layer, self.mixer):
                nn.init.normal_(linear.weight, mean=0.0, std=init_std)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        scores = []
        for i, h in enumerate(hidden_states):
            norm = self.norms[0] if self.shared_layer_norm else self.norms[i]
            scores.append(self.dropout(F.relu(self.per_layer[i](norm(h)))))
        mixed = self.mixer(torch.cat(scores, dim=-1))  # [B, T, L] -> [B, T, 1]
        return self.dropout(F.relu(mixed)).squeeze(-1)


class SparseMaskHead(nn.Module):
    """Learned token masks of SparsePO ("sparse" strategy), from the reference model's hidden states.

    For each of the ``num_layers`` hidden states: LayerNorm -> Linear(d, 1) -> ReLU -> dropout; the ``L`` scores
    are mixed by Linear(L, 1, bias=False) -> ReLU -> dropout. Output is non-negative and unbounded (the L1 term
    of :func:`sparsepo_loss` drives it towards sparsity). As in the authors' ``SimpleMaskAllLayers``, built inside
    their Hugging Face model: Linear weights start from N(0, ``init_std``) (the model's ``initializer_range``,
    0.02) with zero biases, the LayerNorm from (1, 0); their dropout option defaults to 0.01 but their trainer
    zeroes every dropout of the model, the mask head included (TRL's ``disable_dropout``), so it never acts;
    weight decay 0.01 on the Linear weights (set it in the optimiser's parameter groups).

    Args:
        num_layers: ``L``, number of hidden-state tensors given to :meth:`forward`.
        hidden: ``d``, their width.
        dropout: dropout after each per-layer score and after the mixer (authors: effectively 0).
        separate: two independent heads, one for the reward mask ``mu`` and one for the KL mask ``md``
            (authors' ``rw_kl_independent``); otherwise one shared mask.
        shared_layer_norm: one LayerNorm applied to every layer (as in the authors' ``SimpleMaskAllLayers``,
            the default) or one LayerNorm per layer.
        eps: LayerNorm epsilon (authors: the model's layer-norm epsilon).
        init_std: std of the normal init of the Linear weights (biases 0); ``None`` keeps PyTorch's default
            (Kaiming-uniform) init.
    """

    def __init__(
        self,
        num_layers: int,
        hidden: int,
        dropout: float = 0.0,
        separate: bool = False,
        shared_layer_norm: bool = True,
        eps: float = 1e-5,
        init_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        if num_layers < 1 or hidden < 1:
            raise ValueError(f"num_layers and hidden must be positive, got {num_layers}, {hidden}")
        if init_std is not None and init_std <= 0:
            raise ValueError(f"init_std must be positive or None, got {init_std}")
        self.num_layers, self.hidden, self.separate = num_layers, hidden, separate
        branch = (num_layers, hidden, dropout, shared_layer_norm, eps, init_std)
        self.reward_head = _MaskBranch(*branch)
        self.kl_head = _MaskBranch(*branch) if separate else None

    def decayed_parameters(self) -> list[nn.Parameter]:
        """The Linear weights: the parameters the authors' optimiser gives the mask weight decay (biases and
        LayerNorm parameters get none, as Hugging Face's Trainer groups them)."""
        branches = [b for b in (self.reward_head, self.kl_head) if b is not None]
        return [linear.weight for b in branches for linear in (*b.per_layer, b.mixer)]

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> MaskHeadOutput:
        """Compute the masks.

        Args:
            hidden_states: ``L`` tensors ``[B, T, d]`` from the reference model, aligned with the per-token
                log-probs (for a Hugging Face causal LM: ``output.hidden_states[1:]``, positions ``[:, :-1]``).
                Detach them if the reference must not receive gradients (it normally runs under no_grad).

        Returns:
            :class:`MaskHeadOutput`: ``reward_mask`` ``[B, T]`` >= 0 and, when ``separate``, ``kl_mask`` ``[B, T]``
            (else ``None``: use the reward mask for both terms with ``shared_mask=True``).
        """
        if len(hidden_states) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} hidden-state tensors, got {len(hidden_states)}")
        mu = self.reward_head(hidden_states)
        md = self.kl_head(hidden_states) if self.kl_head is not None else None
        return MaskHeadOutput(mu, md)


def _normalise_activation(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` -> z-score then min-max over each row's valid tokens; invalid tokens 0."""
    n = valid.sum(dim=-1, keepdim=True)
    n_safe = n.clamp(min=1)
    mean = torch.where(valid, values, 0.0).sum(-1, keepdim=True) / n_safe
    var = torch.where(valid, (values - mean) ** 2, 0.0).sum(-1, keepdim=True) / (n_safe - 1).clamp(min=1)
    z = (values - mean) / (var.sqrt() + 1e-12)
    lo = torch.where(valid, z, torch.inf).amin(-1, keepdim=True)
    hi = torch.where(valid, z, -torch.inf).amax(-1, keepdim=True)
    span = hi - lo
    flat = ~(span > 0)  # constant rows (incl. one valid token): no token stands out -> uniform weight 1
    scaled = torch.where(flat, torch.ones_like(z), (z - lo) / torch.where(flat, torch.ones_like(span), span))
    return torch.where(valid, scaled, 0.0)


def activation_mask(
    activations: Mapping[str, Sequence[torch.Tensor]] | Sequence[Sequence[torch.Tensor]],
    mask: torch.Tensor,
) -> torch.Tensor:
    """Activation-based token mask of SparsePO ("mapo" strategy), from frozen reference activations.

    For each hooked tensor ``[B, T, d]``: mean over the hidden dim -> z-score over the sequence's valid tokens
    (unbiased std, as the authors' ``apply_masked_z_norm``) -> min-max to ``[0, 1]`` over the valid tokens.
    Then average over the layers of a hook type, then over hook types. The z-score is kept for fidelity to the
    authors' code; min-max alone would give the same values up to rounding. Sequences whose valid activations
    are all equal (or that have one valid token) get weight 1 on every valid token (DPO-like), where the
    authors' code divides by zero.

    The hook types and sites are the authors' (``activation_hook="all"``: mlp, attn, resid, logits); the
    learner maps them onto a Llama-style decoder (``alignment.learners.preference.activation_hook_points``).

    Args:
        activations: hook type -> list of tensors ``[B, T, d]`` (a mapping, or a sequence of such lists); ``d`` may
            be 1 when the hidden-dim mean was already taken (the learner's hooks keep only that mean).
        mask: ``[B, T]`` 1 on valid completion tokens.

    Returns:
        ``[B, T]`` mask in ``[0, 1]``, 0 on invalid tokens, detached (no gradient), float32.
    """
    groups = list(activations.values()) if isinstance(activations, Mapping) else list(activations)
    if not groups or any(len(g) == 0 for g in groups):
        raise ValueError("activation_mask needs at least one hook type with at least one tensor")
    valid = mask.bool()
    with torch.no_grad():
        per_type = []
        for group in groups:
            per_layer = [_normalise_activation(a.detach().float().mean(dim=-1), valid) for a in group]
            per_type.append(torch.stack(per_layer).mean(dim=0))
        out = torch.stack(per_type).mean(dim=0)
    return out.detach()


def mask_stats(values: torch.Tensor, mask: torch.Tensor, threshold: float = 1e-3) -> dict[str, float]:
    """Logging statistics of a token mask over the valid tokens.

    Args:
        values: ``[B, T]`` mask values.
        mask: ``[B, T]`` 1 on valid tokens.
        threshold: values below this count as masked out.

    Returns:
        ``{"sparsity": fraction of valid tokens with value < threshold, "mean": mean value on valid tokens}``
        (0.0 for both when there is no valid token).
    """
    valid = mask.bool()
    v = values.detach()[valid].float()
    if v.numel() == 0:
        return {"sparsity": 0.0, "mean": 0.0}
    return {"sparsity": (v < threshold).float().mean().item(), "mean": v.mean().item()}
