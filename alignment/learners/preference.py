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
  activation mask from forward hooks on the reference model (`activation_hook_points`: the authors' hook types
  mlp / attn / resid / logits mapped onto a Llama-style decoder). The mask head is a sub-module of the trained
  model (so the optimiser, DeepSpeed and ZeRO partitioning see it), starts from the authors' N(0, 0.02) init, has
  its own weight decay, and is saved into every checkpoint as `sparsepo_mask_head.safetensors`.

`beta` and `rpo_eta` left unset in the recipe take the authors' defaults (`PreferenceConfig.resolved`).

Logged per step into TRL's `_metrics` store (averaged over processes, TRL's names where they exist):
rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins (the implicit rewards the loss uses:
beta * log-ratio summed over completion tokens; for SparsePO weighted by the reward mask, beta * sum_t mu_t l_t),
logps/chosen, logps/rejected; rpo/dpo_loss, rpo/regularizer; for SparsePO also sparsepo/u, sparsepo/d,
sparsepo/l1, sparsepo/logit (the loss's logit beta * (U - D)), sparsepo/logit_accuracy (fraction of pairs with
U - D > 0), dpo_rewards/chosen|rejected|accuracies|margins (the unmasked DPO rewards, for comparison with DPO
runs), mask/sparsity (fraction of valid tokens below 1e-3), mask/mean and, with separate masks, mask/kl_sparsity
and mask/kl_mean.
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


HookPoint = tuple[str, torch.nn.Module, str]  # (hook type, module, "input" | "output")


class ActivationRecorder:
    """Forward hooks that keep, per hook type, the hidden-dim mean ``[B, L, 1]`` of each hooked tensor while
    recording is on (the activation mask reduces over the hidden dim first, so nothing wider is kept).

    `points` are (hook type, module, "input" | "output"): "output" hooks the module's output (its first element when
    it is a tuple), "input" its first positional input (or its `hidden_states` keyword).
    """

    def __init__(self, points: list[HookPoint]) -> None:
        self.recording = False
        self.outputs: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._handles = [
            module.register_forward_pre_hook(self._pre_hook(kind), with_kwargs=True)
            if where == "input"
            else module.register_forward_hook(self._hook(kind))
            for kind, module, where in points
        ]

    def _keep(self, kind: str, value: Any) -> None:
        tensor = value[0] if isinstance(value, tuple) else value
        self.outputs[kind].append(tensor.detach().float().mean(dim=-1, keepdim=True))

    def _hook(self, kind: str) -> Any:
        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            if self.recording:
                self._keep(kind, output)

        return keep

    def _pre_hook(self, kind: str) -> Any:
        def keep(module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            if self.recording:
                self._keep(kind, args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values()))))

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


# The authors' hook sites (huawei-noah/HEBO SparsePO, MAPOTrainer.config_hooks) on a Llama-style decoder layer
# (Llama, Qwen2/3, Mistral, Gemma: self_attn.{q,k,v,o}_proj, mlp.down_proj, input/post_attention_layernorm):
# (hook type, path inside the layer, "input" | "output"); "" is the layer itself.
_LAYER_HOOKS: tuple[tuple[str, str, str], ...] = (
    ("mlp", "mlp.down_proj", "input"),  # mlp.post_act: the activated MLP hidden state before the down projection
    ("attn", "self_attn.q_proj", "output"),  # attn.q (before RoPE)
    ("attn", "self_attn.k_proj", "output"),  # attn.k
    ("attn", "self_attn.v_proj", "output"),  # attn.v
    ("attn", "self_attn.o_proj", "input"),  # attn.v_out: attention output before the output projection
    ("resid", "input_layernorm", "output"),  # resid.torso.input_ln_attn
    ("resid", "self_attn", "output"),  # resid.torso.delta_attn
    ("resid", "post_attention_layernorm", "input"),  # resid.torso.post_attn: residual stream after attention
    ("resid", "post_attention_layernorm", "output"),  # resid.torso.post_ln_attn
    ("resid", "mlp", "output"),  # resid.torso.delta_mlp
    ("resid", "", "output"),  # resid.torso.post_mlp: the layer's output
)


def _sub_module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    module: Any = root
    for part in path.split(".") if path else []:
        module = getattr(module, part, None)
        if not isinstance(module, torch.nn.Module):
            return None
    return module


def activation_hook_points(model: torch.nn.Module, hook_types: list[str]) -> list[HookPoint]:
    """Where the SparsePO activation mask reads the reference model, for the authors' hook types.

    Per decoder layer: mlp = the MLP's activated hidden state (input of ``mlp.down_proj``); attn = the q, k, v
    projections and the attention output before ``o_proj``; resid = the attention block's input norm, its output,
    the residual after it (input of ``post_attention_layernorm``), that norm's output, the MLP's output and the
    layer's output; plus, once per model, resid = the token embeddings and the final norm's output, and logits =
    the LM head's output. Not hooked (no module boundary in Hugging Face's attention): the post-RoPE q and k,
    which the authors' own GPT-NeoX/GPT-J code hooks too; see docs/FIDELITY.md.

    Args:
        model: a Hugging Face causal LM (or a PEFT model around one).
        hook_types: a subset of ("mlp", "attn", "resid", "logits").

    Raises ConfigError naming the hook type and the missing module when the model is not a Llama-style decoder.
    """
    base = model.get_base_model() if is_peft_model(model) else model
    get_decoder = getattr(base, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ConfigError(
            f"preference.activation_hooks: {type(base).__name__} has no decoder layer list (get_decoder().layers); "
            "the activation mask supports Llama-style decoders (use mask: sparse for other models)"
        )
    points: list[HookPoint] = []
    for kind, path, where in _LAYER_HOOKS:
        if kind not in hook_types:
            continue
        for index, layer in enumerate(layers):
            module = _sub_module(layer, path)
            if module is None:
                raise ConfigError(
                    f"preference.activation_hooks: hook type {kind!r} needs '{path}' in every decoder layer; layer "
                    f"{index} ({type(layer).__name__}) has none (supported: Llama-style decoders; use mask: sparse)"
                )
            points.append((kind, module, where))
    if "resid" in hook_types:
        ends = {"token embeddings": base.get_input_embeddings(), "final norm": getattr(decoder, "norm", None)}
        for name, module in ends.items():
            if not isinstance(module, torch.nn.Module):
                raise ConfigError(f"preference.activation_hooks: hook type 'resid' needs the model's {name}")
            points.append(("resid", module, "output"))  # resid.post_emb, resid.post_ln_f
    if "logits" in hook_types:
        head = base.get_output_embeddings()
        if not isinstance(head, torch.nn.Module):
            raise ConfigError("preference.activation_hooks: hook type 'logits' needs the model's LM head")
        points.append(("logits", head, "output"))
    return points


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
        self.settings = settings = settings.resolved(algorithm)
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
                    eps=_layer_norm_eps(text_config),
                    init_std=(
                        settings.mask_init_std
                        if settings.mask_init_std is not None
                        else float(getattr(text_config, "initializer_range", 0.02))
                    ),
                )
                base.add_module(MASK_HEAD_MODULE, head)
                self.mask_head = head
            else:
                reference = self.accelerator.unwrap_model(self.ref_model) if self.ref_model is not None else base
                self.recorder = ActivationRecorder(activation_hook_points(reference, settings.hook_types()))

    # --- optimiser: the mask head's Linear weights get their own weight decay (authors: 0.01) -------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.mask_head is not None:
            decayed = self.mask_head.decayed_parameters()
            decayed_ids = {id(p) for p in decayed}
            head_ids = {id(p) for p in self.mask_head.parameters()}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in head_ids]
            optimizer.add_param_group({"params": decayed, "weight_decay": self.settings.mask_weight_decay})
            rest = [p for p in self.mask_head.parameters() if id(p) not in decayed_ids]
            optimizer.add_param_group({"params": rest, "weight_decay": 0.0})  # biases, LayerNorm: no decay
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
        self._log_rewards(mode, "rewards/", *self._dpo_rewards(policy, reference))
        self._log_logps(mode, policy)
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
        policy_seq = ChosenRejected(
            masked_sum(policy.chosen, valid.chosen), masked_sum(policy.rejected, valid.rejected)
        )
        reference_seq = ChosenRejected(
            masked_sum(reference.chosen, valid.chosen), masked_sum(reference.rejected, valid.rejected)
        )
        self._log_rewards(mode, "dpo_rewards/", *self._dpo_rewards(policy_seq, reference_seq))
        self._log_logps(mode, policy_seq)
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
        # TRL's reward names carry the masked rewards the loss uses (beta * sum_t mu_t l_t per side).
        self._log_rewards(mode, "rewards/", out.chosen_rewards, out.rejected_rewards)
        self._log_mean(mode, "sparsepo/u", out.u)
        self._log_mean(mode, "sparsepo/d", out.d)
        self._log_mean(mode, "sparsepo/l1", out.l1)
        logit = s.beta * (out.u - out.d).detach()
        self._log_mean(mode, "sparsepo/logit", logit)
        self._log_mean(mode, "sparsepo/logit_accuracy", (logit > 0).float())
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

    def _dpo_rewards(self, policy: ChosenRejected, reference: ChosenRejected) -> tuple[torch.Tensor, torch.Tensor]:
        """DPO's implicit rewards ``beta * (log pi - log pi_ref)`` [B] per side, from sequence log-probs [B]."""
        beta = self.settings.beta
        return beta * (policy.chosen - reference.chosen).detach(), beta * (
            policy.rejected - reference.rejected
        ).detach()

    def _log_rewards(self, mode: str, prefix: str, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        """TRL's reward metrics (chosen, rejected, accuracies, margins) from per-pair rewards [B] under `prefix`."""
        chosen, rejected = chosen.detach(), rejected.detach()
        self._log_mean(mode, f"{prefix}chosen", chosen)
        self._log_mean(mode, f"{prefix}rejected", rejected)
        self._log_mean(mode, f"{prefix}accuracies", (chosen > rejected).float())
        self._log_mean(mode, f"{prefix}margins", chosen - rejected)

    def _log_logps(self, mode: str, policy: ChosenRejected) -> None:
        """TRL's logps/chosen and logps/rejected: the policy's sequence log-probs [B], summed over completion tokens."""
        self._log_mean(mode, "logps/chosen", policy.chosen.detach())
        self._log_mean(mode, "logps/rejected", policy.rejected.detach())


def _layer_norm_eps(config: Any) -> float:
    """The model's own normalisation epsilon (the authors build the mask head's LayerNorm with it); 1e-5 if none."""
    for name in ("layer_norm_eps", "layer_norm_epsilon", "rms_norm_eps"):
        value = getattr(config, name, None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return 1e-5
