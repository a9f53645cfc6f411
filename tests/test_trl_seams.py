"""Where our learners reach into TRL, transformers, accelerate and DeepSpeed, pinned against the installed versions.

Our learners override or call private methods (TRL has no public hook for them). When an upgrade renames one or
changes its parameters, the subclass would silently stop being called or break mid-run; this test fails first,
naming the seam. Each entry: (owner class, attribute, the parameter names we rely on, our class that overrides it
or None when we only call it). Update the entry only together with the code that uses the seam.
"""

from __future__ import annotations

import inspect

import pytest
from accelerate.state import AcceleratorState
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from transformers import Trainer
from trl import DPOTrainer, GRPOTrainer
from trl.trainer.utils import RepeatSampler

from alignment.learners.checkpointing import AtomicCheckpointMixin
from alignment.learners.grpo import ComposedGRPOTrainer, EpochSeededRepeatSampler
from alignment.learners.preference import PreferenceTrainer

SEAMS = [
    # GRPO: TRL's (experimental) rollout hook and three private steps of its loop
    (GRPOTrainer, "__init__", ["rollout_func", "reward_funcs", "peft_config", "callbacks"], None),
    (
        GRPOTrainer,
        "_calculate_rewards",
        ["inputs", "prompts", "completions", "completion_ids_list"],
        ComposedGRPOTrainer,
    ),
    (GRPOTrainer, "_generate_and_score_completions", ["inputs"], ComposedGRPOTrainer),
    (GRPOTrainer, "_get_train_sampler", ["dataset"], ComposedGRPOTrainer),
    (GRPOTrainer, "_compute_loss", ["model", "inputs"], None),  # called for per-objective gradients
    (
        RepeatSampler,
        "__init__",
        ["data_source", "mini_repeat_count", "batch_size", "repeat_count", "shuffle", "seed"],
        EpochSeededRepeatSampler,
    ),
    # preference learners: the loss of TRL's DPOTrainer, and the optimizer (the SparsePO mask head's group)
    (DPOTrainer, "_compute_loss", ["model", "inputs", "return_outputs"], PreferenceTrainer),
    (Trainer, "create_optimizer", ["model"], PreferenceTrainer),
    # atomic checkpoints: transformers' checkpoint writer, and DeepSpeed's loader switched to weights_only
    (Trainer, "_save_checkpoint", ["model", "trial"], AtomicCheckpointMixin),
    (Trainer, "train", ["resume_from_checkpoint"], None),
    # resumed epochs: every sampler gets the epoch before transformers builds the epoch's (skipping) loader
    (Trainer, "_run_epoch", ["train_dataloader", "epoch"], AtomicCheckpointMixin),
    (TorchCheckpointEngine, "load", ["path", "map_location"], None),
    # iterative rounds under the launcher: accelerate's state is cleared between rounds, the process group kept
    (AcceleratorState, "_reset_state", ["reset_partial_state"], None),
]


def _parameters(function: object) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]  # type: ignore[arg-type]


@pytest.mark.parametrize("owner, name, expected, ours", SEAMS, ids=[f"{o.__name__}.{n}" for o, n, _, _ in SEAMS])
def test_seam_exists_with_the_parameters_we_use(owner: type, name: str, expected: list[str], ours: type | None) -> None:
    assert hasattr(owner, name), f"{owner.__module__}.{owner.__name__}.{name} is gone: revisit {ours or 'its caller'}"
    installed = _parameters(getattr(owner, name))
    missing = [p for p in expected if p not in installed]
    assert not missing, f"{owner.__name__}.{name}{installed} no longer takes {missing}"
    if ours is not None and name in vars(ours):  # our override must take exactly what the base class is given
        mine = _parameters(getattr(ours, name))
        if mine != ["args", "kwargs"]:
            assert mine == installed, f"{ours.__name__}.{name}{mine} differs from {owner.__name__}.{name}{installed}"


def test_rollout_func_is_called_with_prompts_and_the_trainer() -> None:
    """TRL calls rollout_func(prompts, trainer) and reads prompt_ids / completion_ids / logprobs from its dict."""
    source = inspect.getsource(GRPOTrainer)
    assert "self.rollout_func(" in source
    for key in ("prompt_ids", "completion_ids", "logprobs"):
        assert f'"{key}"' in source, key


def test_trl_metrics_store_is_where_the_learners_log() -> None:
    """Both learners append to TRL's per-mode metric lists (`self._metrics[mode][key]`), which TRL averages into
    its logs; a rename would drop every per-objective metric from metrics.jsonl."""
    for trainer in (GRPOTrainer, DPOTrainer):
        assert "self._metrics =" in inspect.getsource(trainer.__init__), trainer.__name__
