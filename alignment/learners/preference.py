"""DPO, RPO and SparsePO learners on TRL's DPOTrainer.

TRL's DPOTrainer does the data work (tokenising standard or conversational preference rows, the collator that
stacks chosen over rejected), the reference model (the base model with the adapter disabled under PEFT, a frozen
copy otherwise, prepared for ZeRO-3), the optimiser, DeepSpeed and logging. This subclass overrides TRL's private
`_compute_loss` (TRL has no public loss hook; the signature is pinned by tests/test_trl_seams.py), so that the loss
is one of the pure functions of `alignment.learners.losses`, and the public `create_optimizer` (the SparsePO mask
head gets its own parameter group). The losses:

- dpo: `losses.dpo.dpo_loss` (Rafailov et al. 2023) on sequence log-probs from TRL's fused LM head; with
  label_smoothing 0 it is TRL's sigmoid loss.
- rpo: `losses.rpo.rpo_loss` (Liu et al. 2024; sum, mean or TRL's pooled SFT form).
- sparsepo: `losses.sparsepo.sparsepo_loss` (Christopoulou et al. 2024) with full logits (the token-level KL
  needs the whole vocabulary) and either the learned `SparseMaskHead` on the reference hidden states or the
  activation mask from forward hooks on reference sub-modules. The mask head is a sub-module of the trained
  model (so the optimiser, DeepSpeed and ZeRO partitioning see it), has its own weight decay, and is saved into
  every checkpoint as `sparsepo_mask_head.safetensors`.

Logged per step into TRL's `_metrics` store (averaged over processes, TRL's names where they exist):
rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected;
rpo/dpo_loss, rpo/regularizer; sparsepo/u, sparsepo/d, sparsepo/l1, mask/sparsity (fraction of valid tokens
below 1e-3), mask/mean and, with separate masks, mask/kl_sparsity and mask/kl_mean.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from alignment.errors import ConfigError
from alignment.learners.checkpointing import AtomicCheckpointMixin
from alignment.learners.losses.common import IGNORE_INDEX, ChosenRejected, masked_sum, split_pairs, token_logps
from alignment.learners.losses.dpo import dpo_loss
from alignment.learners.losses.rpo import rpo_loss
from alignment.learners.losses.sparsepo import SparseMaskHead, activation_mask, sparsepo_loss, token_kl
from alignment.recipes.recipe import PreferenceConfig

MASK_HEAD_FILE = "sparsepo_mask_head.safetensors"
MASK_HEAD_MODULE = "sparsepo_mask_head"
SPARSITY_THRESHOLD = 1e-3


class ActivationRecorder:
    """Forward hooks that keep the outputs of named sub-modules while recording is on.

    `modules` maps a hook type (e.g. "mlp") to the modules of that type, in layer order. Outputs that are tuples
    (attention blocks) contribute their first element.
    """

    def __init__(self, modules: dict[str, list[torch.nn.Module]]) -> None:
        self.recording = False
        self.outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._handles = [
            module.register_forward_hook(self._hook(kind)) for kind, group in modules.items() for module in group
        ]

    def _hook(self, kind: str) -> Any:
        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self.recording:
                self.outputs[kind].append((output[0] if isinstance(output, tuple) else output).detach())

        return keep

    @contextlib.contextmanager
    def record(self) -> Iterator[dict[str, list[torch.Tensor]]]:
        self.outputs = defaultdict(list)
        self.recording = True
        try:
            yield self.outputs
        finally:
            self.recording = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def find_hook_modules(model: torch.nn.Module, kinds: list[str]) -> dict[str, list[torch.nn.Module]]:
    """Sub-modules whose attribute name is one of `kinds` (e.g. every decoder layer's `mlp`), per kind.

    Raises ConfigError naming the kind when a model has no such module.
    """
    found: dict[str, list[torch.nn.Module]] = {kind: [] for kind in kinds}
    for name, module in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in found:
            found[last].append(module)
    missing = [kind for kind, group in found.items() if not group]
    if missing:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(f"preference.activation_hooks: no module named {missing} in the model; names: {names[:30]}")
    return found


class PreferenceTrainer(AtomicCheckpointMixin, DPOTrainer):
    """TRL's DPOTrainer with the loss of `algorithm` ("dpo" | "rpo" | "sparsepo"); see the module docstring."""

    def __init__(
        self,
        *args: Any,
        algorithm: str,
        settings: PreferenceConfig,
        keep_checkpoints: int | None = None,
        **kwargs: Any,
    ) -> None:
        if algorithm not in ("dpo", "rpo", "sparsepo"):
            raise ValueError(f"unknown preference algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.settings = settings
        super().__init__(*args, **kwargs)
        self.keep_checkpoints = keep_checkpoints
        self.mask_head: SparseMaskHead | None = None
        self.recorder: ActivationRecorder | None = None
        if algorithm == "sparsepo":
            base = self.accelerator.unwrap_model(self.model)
            if settings.mask == "sparse":
                text_config = base.config.get_text_config()
                head = SparseMaskHead(
                    num_layers=int(text_config.num_hidden_layers),
                    hidden=int(text_config.hidden_size),
                    dropout=settings.mask_dropout,
                    separate=settings.separate_masks,
                )
                base.add_module(MASK_HEAD_MODULE, head)
                self.mask_head = head
            else:
                reference = self.ref_model if self.ref_model is not None else base
                self.recorder = ActivationRecorder(find_hook_modules(reference, list(settings.activation_hooks)))

    # --- optimiser: the mask head gets its own weight decay (authors: 0.01) ---------------------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.mask_head is not None:
            head_ids = {id(p) for p in self.mask_head.parameters()}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in head_ids]
            optimizer.add_param_group(
                {"params": list(self.mask_head.parameters()), "weight_decay": self.settings.mask_weight_decay}
            )
        return optimizer

    # --- checkpoints: the mask head's weights travel with every checkpoint ------------------------------------
    def save_extra_checkpoint_files(self, folder: Path, write: bool) -> None:
        if self.mask_head is None:
            return
        from safetensors.torch import save_file

        with self._gathered(list(self.mask_head.parameters())):
            state = {k: v.detach().cpu().contiguous() for k, v in self.mask_head.state_dict().items()}
        if write:
            save_file(state, str(folder / MASK_HEAD_FILE))

    def load_extra_checkpoint_files(self, checkpoint: Path) -> None:
        path = checkpoint / MASK_HEAD_FILE
        if self.mask_head is None or not path.is_file():
            return
        from safetensors.torch import load_file

        with self._gathered(list(self.mask_head.parameters()), modifier_rank=0):
            self.mask_head.load_state_dict(load_file(str(path)))

    def _gathered(self, params: list[torch.nn.Parameter], modifier_rank: int | None = None) -> Any:
        """Full parameters inside the block, also when ZeRO-3 partitions them (a no-op otherwise)."""
        if self.is_deepspeed_enabled and any(hasattr(p, "ds_id") for p in params):
            import deepspeed

            return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)
        return contextlib.nullcontext()

    # --- the loss ---------------------------------------------------------------------------------------------
    def _reference_context(self) -> Any:
        """No gradient, no checkpointing; under PEFT without a reference model, the adapter disabled (or 'ref')."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs))
        if self.ref_model is None and is_peft_model(self.accelerator.unwrap_model(self.model)):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = "ref" if "ref" in unwrapped.peft_config else None
            stack.enter_context(use_adapter(unwrapped, adapter_name=adapter))
        return stack

    def _reference_model(self) -> Any:
        return self.ref_model if self.ref_model is not None else self.model

    def _compute_loss(self, model: Any, inputs: dict[str, torch.Tensor], return_outputs: bool) -> Any:
        mode = "train" if self.model.training else "eval"
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        completion_mask = inputs["completion_mask"]
        labels = input_ids.masked_fill(completion_mask == 0, IGNORE_INDEX)
        shift_mask = completion_mask[:, 1:]
        seq_len = shift_mask.size(1)
        model_kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}

        if self.algorithm == "sparsepo":
            loss = self._sparsepo(model, model_kwargs, labels, shift_mask, mode)
        else:
            # Sequence log-probs from TRL's fused head: no [B, L, V] logits are built.
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
            policy_token_logps = outputs.log_probs[:, -seq_len:]
            with self._reference_context():
                ref_outputs = self._reference_model()(**model_kwargs, labels=labels, fused_lm_head=True)
            ref_token_logps = ref_outputs.log_probs[:, -seq_len:]
            loss = self._dpo_or_rpo(policy_token_logps, ref_token_logps, shift_mask, mode)
        return (loss, {}) if return_outputs else loss

    def _dpo_or_rpo(
        self, policy_token_logps: torch.Tensor, ref_token_logps: torch.Tensor, shift_mask: torch.Tensor, mode: str
    ) -> torch.Tensor:
        s = self.settings
        policy = split_pairs(masked_sum(policy_token_logps, shift_mask))
        reference = split_pairs(masked_sum(ref_token_logps, shift_mask))
        self._log_pair_metrics(policy, reference, mode)
        if self.algorithm == "dpo":
            return dpo_loss(
                policy=policy, reference=reference, beta=s.beta, label_smoothing=s.label_smoothing
            ).losses.mean()
        out = rpo_loss(
            policy=policy,
            reference=reference,
            chosen_token_logps=split_pairs(policy_token_logps).chosen,
            chosen_mask=split_pairs(shift_mask).chosen,
            beta=s.beta,
            eta=s.rpo_eta,
            version=s.rpo_version,
        )
        self._log_mean(mode, "rpo/dpo_loss", out.dpo_losses)
        self._log_mean(mode, "rpo/regularizer", out.regularizer)
        return out.losses.mean()

    def _sparsepo(
        self, model: Any, model_kwargs: dict[str, Any], labels: torch.Tensor, shift_mask: torch.Tensor, mode: str
    ) -> torch.Tensor:
        s = self.settings
        shift_labels = labels[:, 1:]
        logits = model(**model_kwargs).logits[:, :-1]
        policy_token_logps = token_logps(logits.float(), shift_labels)
        want_hidden = self.mask_head is not None
        with self._reference_context():
            recording = self.recorder.record() if self.recorder is not None else contextlib.nullcontext({})
            with recording as activations:
                ref_out = self._reference_model()(**model_kwargs, output_hidden_states=want_hidden)
        ref_logits = ref_out.logits[:, :-1]
        ref_token_logps = token_logps(ref_logits.float(), shift_labels)
        kl = token_kl(logits.float(), ref_logits.float()) if s.use_kl else None

        md = None
        if self.mask_head is not None:
            dtype = next(self.mask_head.parameters()).dtype
            hidden = [h[:, :-1].to(dtype) for h in ref_out.hidden_states[1:]]
            masks = self.mask_head(hidden)
            mu, md = masks.reward_mask.float(), (None if masks.kl_mask is None else masks.kl_mask.float())
            lambda_u, lambda_d = s.lambda_u, s.lambda_d
        else:
            mu = activation_mask({k: [a[:, :-1] for a in v] for k, v in activations.items()}, shift_mask)
            lambda_u = lambda_d = 0.0  # a fixed mask: nothing to make sparse
        policy, reference, valid = (
            split_pairs(policy_token_logps),
            split_pairs(ref_token_logps),
            split_pairs(shift_mask),
        )
        self._log_pair_metrics(
            ChosenRejected(masked_sum(policy.chosen, valid.chosen), masked_sum(policy.rejected, valid.rejected)),
            ChosenRejected(masked_sum(reference.chosen, valid.chosen), masked_sum(reference.rejected, valid.rejected)),
            mode,
        )
        out = sparsepo_loss(
            policy_token_logps=policy,
            reference_token_logps=reference,
            completion_mask=valid,
            token_kl=split_pairs(kl) if kl is not None else None,
            reward_mask=split_pairs(mu),
            kl_mask=split_pairs(md) if md is not None else None,
            beta=s.beta,
            lambda_u=lambda_u,
            lambda_d=lambda_d,
            shared_mask=md is None,
        )
        self._log_mean(mode, "sparsepo/u", out.u)
        self._log_mean(mode, "sparsepo/d", out.d)
        self._log_mean(mode, "sparsepo/l1", out.l1)
        self._log_mask(mode, "mask/", mu, shift_mask)
        if md is not None:
            self._log_mask(mode, "mask/kl_", md, shift_mask)
        return out.losses.mean()

    # --- metrics ----------------------------------------------------------------------------------------------
    def _log_mean(self, mode: str, key: str, values: torch.Tensor) -> None:
        self._metrics[mode][key].append(self.accelerator.gather_for_metrics(values.detach().float()).mean().item())

    def _log_mask(self, mode: str, name: str, mask_values: torch.Tensor, valid: torch.Tensor) -> None:
        """Sparsity (fraction of valid tokens below 1e-3) and mean over every process's valid tokens."""
        v = mask_values.detach().float()
        on = valid.bool()
        counts = torch.stack([((v < SPARSITY_THRESHOLD) & on).sum().float(), (v * on).sum(), on.sum().float()])
        below, total, n = self.accelerator.reduce(counts, reduction="sum").tolist()
        n = max(n, 1.0)
        self._metrics[mode][f"{name}sparsity"].append(below / n)
        self._metrics[mode][f"{name}mean"].append(total / n)

    def _log_pair_metrics(self, policy: ChosenRejected, reference: ChosenRejected, mode: str) -> None:
        """TRL's pair metrics from the sequence log-probs [B] of policy / reference on chosen / rejected, summed
        over completion tokens."""
        beta = self.settings.beta
        pc, pr = policy.chosen.detach(), policy.rejected.detach()
        rc, rr = reference.chosen.detach(), reference.rejected.detach()
        chosen_rewards, rejected_rewards = beta * (pc - rc), beta * (pr - rr)
        self._log_mean(mode, "rewards/chosen", chosen_rewards)
        self._log_mean(mode, "rewards/rejected", rejected_rewards)
        self._log_mean(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).float())
        self._log_mean(mode, "rewards/margins", chosen_rewards - rejected_rewards)
        self._log_mean(mode, "logps/chosen", pc)
        self._log_mean(mode, "logps/rejected", pr)
