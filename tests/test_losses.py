"""Preference losses (alignment.losses): DPO, RPO and SparsePO by hand, against TRL 1.16, and their invariants.

TRL equality goes through ``trl.DPOTrainer._compute_loss``, the narrowest TRL 1.16 code path that turns per-token
log-probs into the DPO/SFT loss (there is no standalone loss function in 1.16). It is called unbound, on a
namespace carrying exactly the attributes ``DPOTrainer.__init__`` derives from a real ``DPOConfig``, so no full
trainer (dataset preparation, accelerator, optimiser) is built. Two kinds of model are passed to it:
a stub returning chosen per-token log-probs (exact inputs), and tiny random Qwen2 models patched with TRL's own
``add_fused_lm_head`` and fed a batch from TRL's ``DataCollatorForPreference`` (the whole log-prob pipeline).
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from alignment.learners.losses.common import ChosenRejected as CR
from alignment.learners.losses.common import (
    masked_mean,
    masked_sum,
    sequence_logps,
    shift_for_causal_lm,
    split_pairs,
    token_logps,
)
from alignment.learners.losses.dpo import dpo_loss
from alignment.learners.losses.rpo import rpo_loss
from alignment.learners.losses.sparsepo import (
    SparseMaskHead,
    activation_mask,
    mask_stats,
    sparsepo_loss,
    token_kl,
)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# --------------------------------------------------------------------------------------------------------------
# TRL 1.16 harness
# --------------------------------------------------------------------------------------------------------------


class _CPUAccelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def gather_for_metrics(x: torch.Tensor) -> torch.Tensor:
        return x


class _LogpsModel(torch.nn.Module):
    """Stands in for a fused-head model: returns the given per-token log-probs ``[2B, L-1]``."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        super().__init__()
        self.log_probs = log_probs

    def forward(self, **kwargs):
        zeros = torch.zeros_like(self.log_probs)
        return types.SimpleNamespace(
            log_probs=self.log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None
        )


def _trl_dpo_loss(tmp_path, model, inputs, *, beta, loss_type, loss_weights=None, ref_model=None):
    """TRL 1.16 ``DPOTrainer._compute_loss`` on a namespace built like ``DPOTrainer.__init__`` builds itself."""
    from trl import DPOConfig, DPOTrainer

    cfg = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        precompute_ref_log_probs=ref_model is None,
        bf16=False,
        report_to=[],
    )
    trainer = types.SimpleNamespace(
        model=model,
        ref_model=ref_model,
        args=cfg,
        accelerator=_CPUAccelerator(),
        beta=cfg.beta,
        precompute_ref_logps=cfg.precompute_ref_log_probs,
        loss_types=cfg.loss_type,
        loss_weights=cfg.loss_weights or [1.0] * len(cfg.loss_type),
        ld_alpha=cfg.ld_alpha,
        f_divergence_type=cfg.f_divergence_type,
        f_alpha_divergence_coef=cfg.f_alpha_divergence_coef,
        label_smoothing=cfg.label_smoothing,
        use_weighting=cfg.use_weighting,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    with torch.no_grad():
        loss = DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    return loss, trainer._metrics["train" if model.training else "eval"]


def _synthetic_batch(lengths_w, lengths_l, prompt_len=2, seed=0):
    """Per-token log-probs in TRL's layout: rows [chosen..., rejected...], shifted mask = completion_mask[:, 1:]."""
    g = torch.Generator().manual_seed(seed)
    lengths = list(lengths_w) + list(lengths_l)
    full_len = prompt_len + max(lengths)
    completion_mask = torch.zeros(len(lengths), full_len, dtype=torch.long)
    for i, n in enumerate(lengths):
        completion_mask[i, prompt_len : prompt_len + n] = 1
    shift_mask = completion_mask[:, 1:]
    log_probs = -3.0 * torch.rand(len(lengths), full_len - 1, generator=g) * shift_mask  # 0 off-mask, as TRL
    ref = -10.0 * torch.rand(len(lengths), generator=g) - 1.0
    b = len(lengths_w)
    inputs = {
        "input_ids": torch.zeros(len(lengths), full_len, dtype=torch.long),
        "attention_mask": torch.ones(len(lengths), full_len, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref[:b],
        "ref_rejected_logps": ref[b:],
    }
    return log_probs, shift_mask, inputs


# --------------------------------------------------------------------------------------------------------------
# common helpers
# --------------------------------------------------------------------------------------------------------------


def test_token_and_sequence_logps_by_hand():
    # vocab of 2 with logits [0, ln 3]: p = [1/4, 3/4]
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, -100]])
    per_token = token_logps(logits, labels)
    assert torch.allclose(per_token, torch.tensor([[math.log(0.75), math.log(0.25), 0.0]]), atol=1e-6)
    mask = torch.tensor([[1, 1, 0]])
    assert sequence_logps(logits, labels, mask).item() == pytest.approx(math.log(0.75 * 0.25), abs=1e-6)
    assert masked_mean(per_token, mask).item() == pytest.approx(math.log(0.75 * 0.25) / 2, abs=1e-6)
    assert masked_mean(per_token, mask, dim=None).item() == pytest.approx(math.log(0.75 * 0.25) / 2, abs=1e-6)
    ids = torch.tensor([[7, 8, 9, 10]])
    lg, lb, mk = shift_for_causal_lm(torch.zeros(1, 4, 11), ids, torch.tensor([[0, 0, 1, 1]]))
    assert lg.shape == (1, 3, 11) and lb.tolist() == [[8, 9, 10]] and mk.tolist() == [[0, 1, 1]]
    with pytest.raises(ValueError):
        token_logps(torch.zeros(1, 3, 2), torch.zeros(1, 2, dtype=torch.long))


# --------------------------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------------------------


def test_dpo_by_hand():
    pc, pr, rc, rr = (torch.tensor([v]) for v in (-1.0, -2.0, -1.5, -1.5))
    policy, reference = CR(chosen=pc, rejected=pr), CR(chosen=rc, rejected=rr)
    out = dpo_loss(policy=policy, reference=reference, beta=0.5)
    # margin = (-1 + 1.5) - (-2 + 1.5) = 1, h = 0.5
    assert out.losses.item() == pytest.approx(-logsig(0.5), abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.25) and out.rejected_rewards.item() == pytest.approx(-0.25)
    smoothed = dpo_loss(policy=policy, reference=reference, beta=0.5, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(-0.9 * logsig(0.5) - 0.1 * logsig(-0.5), abs=1e-6)
    with pytest.raises(ValueError):
        dpo_loss(policy=policy, reference=reference, beta=0.5, label_smoothing=0.6)
    with pytest.raises(TypeError):  # positional arguments could be transposed silently: refused
        dpo_loss(policy, reference, 0.5)  # type: ignore[misc]


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_matches_trl_sigmoid(tmp_path, beta):
    log_probs, _, inputs = _synthetic_batch([5, 2, 4], [3, 6, 1], seed=int(beta * 10))
    loss_trl, metrics = _trl_dpo_loss(tmp_path, _LogpsModel(log_probs), inputs, beta=beta, loss_type=["sigmoid"])
    seq = log_probs.sum(dim=1)
    ours = dpo_loss(
        policy=CR(chosen=seq[:3], rejected=seq[3:]),
        reference=CR(chosen=inputs["ref_chosen_logps"], rejected=inputs["ref_rejected_logps"]),
        beta=beta,
    )
    assert ours.losses.mean().item() == pytest.approx(loss_trl.item(), abs=1e-6)
    assert ours.chosen_rewards.mean().item() == pytest.approx(metrics["rewards/chosen"][-1], abs=1e-6)
    assert ours.rejected_rewards.mean().item() == pytest.approx(metrics["rewards/rejected"][-1], abs=1e-6)


def _tiny_lm(seed: int):
    from tiny_models import tiny_qwen2_config
    from transformers import Qwen2ForCausalLM

    class _Vocab:  # tiny_qwen2_config only reads the size and the pad id
        pad_token_id = 0

        def __len__(self) -> int:
            return 48

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(tiny_qwen2_config(_Vocab(), tie_word_embeddings=True)).eval()


def test_dpo_and_trl_sft_match_trl_on_a_tiny_model(tmp_path):
    """Whole pipeline: TRL's collator and fused LM head vs our logits -> shift -> sequence_logps -> losses."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.utils import add_fused_lm_head

    policy, ref = _tiny_lm(0), _tiny_lm(1)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    add_fused_lm_head(ref)
    examples = [
        {"prompt_ids": [3, 4, 5], "chosen_ids": [6, 7, 8, 9, 1], "rejected_ids": [10, 1]},
        {"prompt_ids": [11, 12], "chosen_ids": [13, 1], "rejected_ids": [14, 15, 16, 17, 18, 1]},
        {"prompt_ids": [19], "chosen_ids": [20, 21, 22], "rejected_ids": [23, 24, 1]},
    ]
    inputs = DataCollatorForPreference(pad_token_id=0)(examples)

    with torch.no_grad():
        seq, tok = [], []
        for model in (policy, ref):
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            lg, labels, mask = shift_for_causal_lm(logits, inputs["input_ids"], inputs["completion_mask"])
            seq.append(sequence_logps(lg, labels, mask))
            tok.append(token_logps(lg, labels) * mask)
        # per-token log-probs agree with TRL's fused head
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # as DPOTrainer builds them
        fused = policy(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels, fused_lm_head=True
        ).log_probs
        assert torch.allclose(tok[0], fused, atol=1e-5)

    policy_seq, ref_seq = split_pairs(seq[0]), split_pairs(seq[1])
    mask_w = inputs["completion_mask"][:, 1:].chunk(2)[0]
    beta, eta = 1.0, 0.7
    loss_trl, _ = _trl_dpo_loss(tmp_path, policy, inputs, beta=beta, loss_type=["sigmoid"], ref_model=ref)
    ours_dpo = dpo_loss(policy=policy_seq, reference=ref_seq, beta=beta)
    assert ours_dpo.losses.mean().item() == pytest.approx(loss_trl.item(), abs=1e-5)

    loss_trl, _ = _trl_dpo_loss(
        tmp_path, policy, inputs, beta=beta, loss_type=["sigmoid", "sft"], loss_weights=[1.0, eta], ref_model=ref
    )
    ours = rpo_loss(
        policy=policy_seq,
        reference=ref_seq,
        chosen_token_logps=split_pairs(tok[0]).chosen,
        chosen_mask=mask_w,
        beta=beta,
        eta=eta,
        version="trl_sft",
    )
    assert ours.losses.mean().item() == pytest.approx(loss_trl.item(), abs=1e-5)


# --------------------------------------------------------------------------------------------------------------
# RPO
# --------------------------------------------------------------------------------------------------------------

# Two pairs whose chosen completions have 1 and 3 tokens; DPO margin 0, so L_DPO = log 2 for both pairs.
RPO_TOKENS = torch.tensor([[-2.0, 0.0, 0.0], [-0.5, -0.5, -0.5]])
RPO_MASK = torch.tensor([[1, 0, 0], [1, 1, 1]])
RPO_BETA, RPO_ETA = 0.1, 0.2
# sum:     -eta * beta * sum_t logp            = 0.2 * 0.1 * [2.0, 1.5]        = [0.04, 0.03]
# mean:     eta * (-(1/|y_w|) sum_t logp)       = 0.2 * [2.0, 0.5]              = [0.40, 0.10]
# trl_sft:  eta * pooled NLL = 0.2 * (2 + 1.5) / 4 tokens = 0.175 for every pair
RPO_EXPECTED = {"sum": [0.04, 0.03], "mean": [0.40, 0.10], "trl_sft": [0.175, 0.175]}


def _rpo_inputs() -> dict:
    seq_w = masked_sum(RPO_TOKENS, RPO_MASK)  # [-2.0, -1.5]
    seq_l = torch.tensor([-4.0, -3.0])
    return {  # ref == policy: margin 0
        "policy": CR(chosen=seq_w, rejected=seq_l),
        "reference": CR(chosen=seq_w.clone(), rejected=seq_l.clone()),
        "chosen_token_logps": RPO_TOKENS,
        "chosen_mask": RPO_MASK,
        "beta": RPO_BETA,
        "eta": RPO_ETA,
    }


@pytest.mark.parametrize("version", ["sum", "mean", "trl_sft"])
def test_rpo_versions_by_hand(version):
    out = rpo_loss(**_rpo_inputs(), version=version)
    expected = torch.tensor(RPO_EXPECTED[version]) + math.log(2.0)
    assert torch.allclose(out.losses, expected, atol=1e-6)
    assert torch.allclose(out.dpo_losses, torch.full((2,), math.log(2.0)), atol=1e-6)


def test_rpo_versions_are_distinct_and_validated():
    means = {v: rpo_loss(**_rpo_inputs(), version=v).losses.mean().item() for v in ("sum", "mean", "trl_sft")}
    assert means["sum"] == pytest.approx(math.log(2) + 0.035)
    assert means["mean"] == pytest.approx(math.log(2) + 0.25)
    assert means["trl_sft"] == pytest.approx(math.log(2) + 0.175)
    assert len({round(v, 6) for v in means.values()}) == 3
    with pytest.raises(ValueError):
        rpo_loss(**_rpo_inputs(), version="avg")


def test_rpo_trl_sft_is_trls_sft_term_and_the_others_are_not(tmp_path):
    """Same inputs through TRL: loss_type ["sft"] alone, then ["sigmoid", "sft"] weighted [1, eta]."""
    # lay the RPO case out in TRL's rows [chosen..., rejected...] with a one-token prompt
    log_probs = torch.zeros(4, 3)
    log_probs[:2] = RPO_TOKENS
    log_probs[2:, 0] = torch.tensor([-4.0, -3.0])
    completion_mask = torch.zeros(4, 4, dtype=torch.long)
    completion_mask[:2, 1:] = RPO_MASK
    completion_mask[2:, 1] = 1
    rpo_inputs = _rpo_inputs()
    rc, rr = rpo_inputs["reference"]
    inputs = {
        "input_ids": torch.zeros(4, 4, dtype=torch.long),
        "attention_mask": torch.ones(4, 4, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": rc,
        "ref_rejected_logps": rr,
    }
    model = _LogpsModel(log_probs)
    sft_only, _ = _trl_dpo_loss(tmp_path, model, inputs, beta=RPO_BETA, loss_type=["sft"])
    ours = rpo_loss(**rpo_inputs, version="trl_sft")
    assert sft_only.item() == pytest.approx(0.875, abs=1e-6)  # pooled NLL (2 + 1.5) / 4
    assert torch.allclose(ours.regularizer, sft_only.expand(2), atol=1e-6)

    combined, _ = _trl_dpo_loss(
        tmp_path, model, inputs, beta=RPO_BETA, loss_type=["sigmoid", "sft"], loss_weights=[1.0, RPO_ETA]
    )
    assert ours.losses.mean().item() == pytest.approx(combined.item(), abs=1e-6)
    for version in ("sum", "mean"):
        other = rpo_loss(**rpo_inputs, version=version)
        assert abs(other.losses.mean().item() - combined.item()) > 1e-2


def test_rpo_trl_sft_matches_trl_on_random_batches(tmp_path):
    log_probs, shift_mask, inputs = _synthetic_batch([4, 1, 6, 2], [2, 5, 3, 3], seed=3)
    seq = log_probs.sum(dim=1)
    loss_trl, _ = _trl_dpo_loss(
        tmp_path, _LogpsModel(log_probs), inputs, beta=0.3, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.4]
    )
    ours = rpo_loss(
        policy=CR(chosen=seq[:4], rejected=seq[4:]),
        reference=CR(chosen=inputs["ref_chosen_logps"], rejected=inputs["ref_rejected_logps"]),
        chosen_token_logps=log_probs[:4],
        chosen_mask=shift_mask[:4],
        beta=0.3,
        eta=0.4,
        version="trl_sft",
    )
    assert ours.losses.mean().item() == pytest.approx(loss_trl.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------------------
# SparsePO
# --------------------------------------------------------------------------------------------------------------


def _random_token_case(seed: int, b: int = 4, t: int = 7):
    g = torch.Generator().manual_seed(seed)
    mask_w = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=g)).long()
    mask_l = (torch.arange(t) < torch.randint(1, t + 1, (b, 1), generator=g)).long()
    tensors = [-4.0 * torch.rand(b, t, generator=g) for _ in range(4)]
    return tensors, mask_w, mask_l


def _sparsepo(pw, rw, pl, rl, kl, mask_w, mask_l, reward_mask, kl_mask, **settings):
    """sparsepo_loss on per-side tensors: policy / reference log-probs and masks of chosen (w) and rejected (l)."""
    return sparsepo_loss(
        policy_token_logps=CR(chosen=pw, rejected=pl),
        reference_token_logps=CR(chosen=rw, rejected=rl),
        completion_mask=CR(chosen=mask_w, rejected=mask_l),
        token_kl=kl,
        reward_mask=reward_mask,
        kl_mask=kl_mask,
        **settings,
    )


@pytest.mark.parametrize("seed", range(4))
def test_sparsepo_with_unit_masks_and_no_kl_is_dpo(seed):
    (pw, rw, pl, rl), mask_w, mask_l = _random_token_case(seed)
    ones_w, ones_l = torch.ones_like(pw), torch.ones_like(pl)
    beta = 0.1 + 0.2 * seed
    dpo = dpo_loss(
        policy=CR(chosen=masked_sum(pw, mask_w), rejected=masked_sum(pl, mask_l)),
        reference=CR(chosen=masked_sum(rw, mask_w), rejected=masked_sum(rl, mask_l)),
        beta=beta,
    )
    for mu_w, mu_l in ((ones_w, ones_l), (None, None)):
        reward_mask = None if mu_w is None else CR(chosen=mu_w, rejected=mu_l)
        out = _sparsepo(pw, rw, pl, rl, None, mask_w, mask_l, reward_mask, None, beta=beta)
        assert torch.allclose(out.losses, dpo.losses, atol=1e-6)
        assert torch.allclose(out.chosen_rewards, dpo.chosen_rewards, atol=1e-6)
        assert torch.allclose(out.rejected_rewards, dpo.rejected_rewards, atol=1e-6)
        assert torch.all(out.d == 0)


def _sparse_hand_case():
    # chosen: 2 tokens; rejected: 3 positions, the last one padding (its huge values must be ignored)
    pw, rw = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])  # l_w = [0.5, -1.0]
    pl, rl = torch.tensor([[-1.0, -1.0, 5.0]]), torch.tensor([[-0.5, -2.0, -7.0]])  # l_l = [-0.5, 1.0, (12)]
    kl_w, kl_l = torch.tensor([[0.1, 0.4]]), torch.tensor([[0.2, 0.3, 50.0]])
    mask_w, mask_l = torch.tensor([[1, 1]]), torch.tensor([[1, 1, 0]])
    mu_w, mu_l = torch.tensor([[2.0, 0.5]]), torch.tensor([[1.0, 3.0, 100.0]])
    md_w, md_l = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.0, 7.0]])
    return pw, rw, pl, rl, kl_w, kl_l, mask_w, mask_l, mu_w, mu_l, md_w, md_l


def test_sparsepo_by_hand_separate_masks():
    pw, rw, pl, rl, kl_w, kl_l, mask_w, mask_l, mu_w, mu_l, md_w, md_l = _sparse_hand_case()
    kl, mu, md = CR(kl_w, kl_l), CR(mu_w, mu_l), CR(md_w, md_l)
    out = _sparsepo(pw, rw, pl, rl, kl, mask_w, mask_l, mu, md, beta=0.5, lambda_u=0.01, lambda_d=0.02)
    # U = (2*0.5 + 0.5*-1) - (1*-0.5 + 3*1) = 0.5 - 2.5 = -2.0
    # D = (0.5*0.2 + 0*0.3) - (1*0.1 + 2*0.4) = 0.1 - 0.9 = -0.8
    # L1 = 0.01 * (2.5 + 4.0) + 0.02 * (3.0 + 0.5) = 0.065 + 0.07
    assert out.u.item() == pytest.approx(-2.0, abs=1e-6)
    assert out.d.item() == pytest.approx(-0.8, abs=1e-6)
    assert out.l1.item() == pytest.approx(0.135, abs=1e-6)
    assert out.losses.item() == pytest.approx(-logsig(0.5 * (-2.0 + 0.8)) + 0.135, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.25) and out.rejected_rewards.item() == pytest.approx(1.25)


def test_sparsepo_by_hand_shared_mask_halves_the_l1_weights():
    pw, rw, pl, rl, kl_w, kl_l, mask_w, mask_l, mu_w, mu_l, _, _ = _sparse_hand_case()
    kl, mu = CR(kl_w, kl_l), CR(mu_w, mu_l)
    shared = {"beta": 0.5, "lambda_u": 0.01, "lambda_d": 0.02, "shared_mask": True}
    out = _sparsepo(pw, rw, pl, rl, kl, mask_w, mask_l, mu, None, **shared)
    # D = (1*0.2 + 3*0.3) - (2*0.1 + 0.5*0.4) = 1.1 - 0.4 = 0.7; L1 = (0.01/2 + 0.02/2) * (2.5 + 4.0)
    assert out.d.item() == pytest.approx(0.7, abs=1e-6)
    assert out.l1.item() == pytest.approx(0.0975, abs=1e-6)
    assert out.losses.item() == pytest.approx(-logsig(0.5 * (-2.0 - 0.7)) + 0.0975, abs=1e-6)
    same = _sparsepo(pw, rw, pl, rl, kl, mask_w, mask_l, mu, mu, **shared)
    assert torch.allclose(same.losses, out.losses)
    with pytest.raises(ValueError):
        _sparsepo(pw, rw, pl, rl, kl, mask_w, mask_l, mu, CR(mu_w * 2, mu_l), **shared)
    # KL term dropped: only the reward-mask penalty remains, un-halved
    no_kl = _sparsepo(pw, rw, pl, rl, None, mask_w, mask_l, mu, None, **shared)
    assert no_kl.l1.item() == pytest.approx(0.065, abs=1e-6) and no_kl.d.item() == 0.0
    with pytest.raises(TypeError):  # positional arguments could be transposed silently: refused
        sparsepo_loss(CR(pw, pl), CR(rw, rl), CR(mask_w, mask_l), kl, mu, None, 0.5)  # type: ignore[misc]


def test_token_kl_matches_torch_kl_div():
    g = torch.Generator().manual_seed(0)
    policy, ref = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    expected = F.kl_div(F.log_softmax(policy, -1), F.log_softmax(ref, -1), reduction="none", log_target=True).sum(-1)
    kl = token_kl(policy, ref)
    assert kl.shape == (2, 5)
    assert torch.allclose(kl, expected, atol=1e-6)
    assert torch.all(kl >= 0) and torch.allclose(token_kl(ref, ref), torch.zeros(2, 5), atol=1e-6)


def test_sparsepo_gradients_reach_the_masks():
    (pw, rw, pl, rl), mask_w, mask_l = _random_token_case(7)
    mu_w = torch.rand_like(pw).requires_grad_()
    mu_l = torch.rand_like(pl).requires_grad_()
    kl_w, kl_l = torch.rand_like(pw), torch.rand_like(pl)
    out = _sparsepo(
        pw, rw, pl, rl, CR(kl_w, kl_l), mask_w, mask_l, CR(mu_w, mu_l), None, beta=0.3, lambda_u=0.01, lambda_d=0.01,
        shared_mask=True,
    )  # fmt: skip
    out.losses.mean().backward()
    assert mu_w.grad is not None and torch.all(mu_w.grad[mask_w == 0] == 0) and mu_w.grad.abs().sum() > 0


@pytest.mark.parametrize("separate", [False, True])
def test_mask_head_shape_and_non_negative(separate):
    torch.manual_seed(0)
    head = SparseMaskHead(num_layers=3, hidden=16, separate=separate)
    hidden = tuple(torch.randn(2, 5, 16) for _ in range(3))
    out = head(hidden)
    assert out.reward_mask.shape == (2, 5) and torch.all(out.reward_mask >= 0)
    if separate:
        assert out.kl_mask is not None and out.kl_mask.shape == (2, 5) and torch.all(out.kl_mask >= 0)
        assert not torch.equal(out.kl_mask, out.reward_mask)
    else:
        assert out.kl_mask is None
    assert sum(p.numel() for p in head.parameters()) == (2 if separate else 1) * (2 * 16 + 3 * 17 + 3)
    with pytest.raises(ValueError):
        head(hidden[:2])
    per_layer = SparseMaskHead(3, 16, shared_layer_norm=False)
    assert len(per_layer.reward_head.norms) == 3


def test_mask_head_starts_from_the_authors_init_and_decays_only_linear_weights():
    """N(0, 0.02) Linear weights and zero biases (a Hugging Face model's _init_weights, where the authors build the
    head); PyTorch's default init (uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in) = 0.036 here) only on request."""
    torch.manual_seed(0)
    head = SparseMaskHead(num_layers=8, hidden=256, separate=True)
    weights = torch.cat([lin.weight.flatten() for b in (head.reward_head, head.kl_head) for lin in b.per_layer])
    assert weights.numel() == 4096
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)  # std of 4096 draws: within ~2.2% at 2 sigma
    assert abs(weights.mean().item()) < 0.002
    biases = [lin.bias for b in (head.reward_head, head.kl_head) for lin in b.per_layer]
    assert all(torch.equal(bias, torch.zeros(1)) for bias in biases)
    assert torch.equal(head.reward_head.norms[0].weight, torch.ones(256))
    assert head.reward_head.dropout.p == 0.0  # the authors' trainer turns the head's dropout off
    pytorch_default = SparseMaskHead(num_layers=8, hidden=256, init_std=None)
    default_weights = torch.cat([lin.weight.flatten() for lin in pytorch_default.reward_head.per_layer])
    assert default_weights.std().item() == pytest.approx((3 * 256) ** -0.5, rel=0.05)
    assert any(lin.bias.abs().sum() > 0 for lin in pytorch_default.reward_head.per_layer)
    # weight decay goes to the Linear weights only (biases and LayerNorm parameters get none, as HF's Trainer)
    decayed = {id(p) for p in head.decayed_parameters()}
    expected = {id(lin.weight) for b in (head.reward_head, head.kl_head) for lin in (*b.per_layer, b.mixer)}
    assert decayed == expected and len(decayed) == 18
    with pytest.raises(ValueError, match="init_std"):
        SparseMaskHead(num_layers=2, hidden=4, init_std=0.0)


def test_mask_head_trains():
    torch.manual_seed(0)
    head = SparseMaskHead(num_layers=4, hidden=8, dropout=0.0, separate=True)
    hidden = tuple(torch.randn(4, 6, 8) for _ in range(4))
    target = (hidden[0][..., 0] > 0).float()  # a toy "important token" pattern

    def toy_loss():
        out = head(hidden)
        return F.mse_loss(out.reward_mask, target) + F.mse_loss(out.kl_mask, 1.0 - target)

    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    start = toy_loss().item()
    for _ in range(30):
        opt.zero_grad()
        toy_loss().backward()
        opt.step()
    assert toy_loss().item() < 0.5 * start


def test_activation_mask_range_detached_and_ignores_invalid_tokens():
    g = torch.Generator().manual_seed(0)
    acts = {
        "mlp": [torch.randn(3, 6, 4, generator=g, requires_grad=True) for _ in range(2)],
        "attn": [torch.randn(3, 6, 4, generator=g)],
    }
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]])
    out = activation_mask(acts, mask)
    assert out.shape == (3, 6) and not out.requires_grad and out.grad_fn is None
    assert torch.all(out >= 0) and torch.all(out <= 1)
    assert torch.all(out[mask == 0] == 0)
    # changing activations on invalid tokens changes nothing
    poked = {k: [a.detach().clone() for a in v] for k, v in acts.items()}
    for group in poked.values():
        for a in group:
            a[mask == 0] = 1e4
    assert torch.allclose(activation_mask(poked, mask), out)
    # a list of groups is accepted too
    assert torch.allclose(activation_mask(list(acts.values()), mask), out)


def test_activation_mask_by_hand_averages_layers_then_hook_types():
    mask = torch.tensor([[1, 1, 1, 0]])

    def act(values):  # hidden dim 2 with identical columns: the mean over d is `values`
        return torch.tensor(values).view(1, 4, 1).repeat(1, 1, 2)

    a1 = act([1.0, 2.0, 3.0, 99.0])  # -> [0, 0.5, 1, 0]
    a2 = act([3.0, 2.0, 1.0, -5.0])  # -> [1, 0.5, 0, 0]
    b1 = act([0.0, 0.0, 4.0, 0.0])  # -> [0, 0, 1, 0]
    assert torch.allclose(activation_mask({"x": [a1]}, mask), torch.tensor([[0.0, 0.5, 1.0, 0.0]]))
    out = activation_mask({"x": [a1, a2], "y": [b1]}, mask)
    # layers of "x" average to [0.5, 0.5, 0.5]; then with "y": [0.25, 0.25, 0.75] (a flat mean would differ)
    assert torch.allclose(out, torch.tensor([[0.25, 0.25, 0.75, 0.0]]), atol=1e-6)
    # constant valid activations -> uniform weight 1 (no division by zero)
    flat = activation_mask({"x": [act([2.0, 2.0, 2.0, 7.0])]}, mask)
    assert torch.allclose(flat, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))


def test_mask_stats():
    values = torch.tensor([[0.0, 5e-4, 0.5, 9.0], [2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    stats = mask_stats(values, mask)
    assert stats["sparsity"] == pytest.approx(2 / 4)
    assert stats["mean"] == pytest.approx((0.0 + 5e-4 + 0.5 + 2.0) / 4)
    assert mask_stats(values, torch.zeros_like(mask)) == {"sparsity": 0.0, "mean": 0.0}
