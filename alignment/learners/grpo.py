"""GRPO on TRL's GRPOTrainer with the reward composer and the rollout worker plugged in.

Where it reaches into TRL (pinned against the installed TRL by tests/test_trl_seams.py, so an upgrade that moves
one fails loudly). One public hook, TRL-documented but marked experimental:
- `rollout_func`: samples come from a `rollout/` engine; an engine with its own copy of the policy (vLLM, a
  rollout server) is synced first whenever an optimizer step has changed the weights. TRL warns that the hook is
  experimental; that one warning is filtered where the trainer is built, nowhere else.
Three private methods, overridden because TRL offers no public point there:
- `_calculate_rewards`: the composer scores every objective on this process's rows (failures become NaN and
  are counted); the [N, K] matrix is gathered across processes, as TRL does, and kept for the step.
- `_generate_and_score_completions`: after TRL's own pass, the weighting strategy gets what it asked for about
  the policy as it stands (a held-out pass, per-objective gradients), the advantages are replaced by the
  composer's (masking, normalisation and weighting are the composer's job), TRL's `reward` metrics are replaced
  by the composite reward those advantages come from, per-objective and composite rewards and the weights are
  logged, and the weighting strategy sees the gathered matrix (identical on every rank).
- `_get_train_sampler`: TRL's RepeatSampler re-seeded per epoch, without which a resumed run does not see the same
  prompts as an uninterrupted one.
And it calls TRL's private `_compute_loss` (per-objective gradients for gradient weighting) and appends to TRL's
`_metrics` store. Checkpoints go through `AtomicCheckpointMixin` (transformers' private `_save_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import RepeatSampler

from alignment.learners.checkpointing import AtomicCheckpointMixin
from alignment.learners.heldout import HeldOutSet, point_from_sums, score_sums
from rewards.composer import Composition, RewardComposer
from rewards.weighting.gradient import in_layer_band
from rollout.base import Prompt, RolloutEngine, Sample, SamplingParams


class ObjectiveRewardFunction:
    """One objective of the composer as a TRL reward function (TRL names its metrics after `__name__`)."""

    def __init__(self, composer: RewardComposer, index: int) -> None:
        self.composer = composer
        self.index = index
        self.__name__ = composer.objectives[index].name

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        columns = {k: v for k, v in kwargs.items() if isinstance(v, list) and len(v) == len(completions)}
        values = self.composer.score_objective(self.index, prompts, completions, **columns)
        return [None if np.isnan(v) else float(v) for v in values]


def run_lengths(prompts: Sequence[Prompt]) -> list[tuple[Prompt, int]]:
    """Collapse consecutive equal prompts (TRL repeats each prompt G times) into (prompt, count) runs."""
    runs: list[tuple[Prompt, int]] = []
    for prompt in prompts:
        if runs and runs[-1][0] == prompt:
            runs[-1] = (prompt, runs[-1][1] + 1)
        else:
            runs.append((prompt, 1))
    return runs


def generate_for_prompts(engine: RolloutEngine, prompts: Sequence[Prompt], params: SamplingParams) -> list[Sample]:
    """One sample per entry of `prompts` (which repeats each prompt), in order; equal runs share one request."""
    if not prompts:  # a process with no share of a held-out set still takes part in the sync around it
        return []
    runs = run_lengths(prompts)
    counts = {count for _, count in runs}
    if len(counts) == 1:
        grouped = engine.generate([p for p, _ in runs], dataclasses.replace(params, n=counts.pop()))
    else:
        grouped = engine.generate(list(prompts), dataclasses.replace(params, n=1))
    return [sample for group in grouped for sample in group]


class EpochSeededRepeatSampler(RepeatSampler):
    """TRL's RepeatSampler whose shuffle depends only on (seed, epoch).

    TRL's sampler draws each epoch's permutation from one generator seeded once, so a resumed run (which does
    not replay earlier epochs) would see a different prompt order than the uninterrupted run. The Trainer calls
    `set_epoch` at the start of every epoch; reseeding there makes resume exact.
    """

    def set_epoch(self, epoch: int) -> None:
        if self.seed is not None:
            self.generator.manual_seed(int(self.seed) + int(epoch))


class ComposedGRPOTrainer(AtomicCheckpointMixin, GRPOTrainer):
    """TRL's GRPOTrainer driven by a `RewardComposer` and a rollout engine (see the module docstring)."""

    def __init__(
        self,
        *,
        composer: RewardComposer,
        engine: RolloutEngine,
        sampling: SamplingParams,
        keep_checkpoints: int | None = None,
        heldout: HeldOutSet | None = None,
        **kwargs: Any,
    ) -> None:
        self.composer = composer
        self.rollout_engine = engine
        self.sampling = sampling
        self.keep_checkpoints = keep_checkpoints
        self.heldout = heldout
        self._reward_matrix: torch.Tensor | None = None
        self._reward_failures: dict[str, int] = {}
        self._reward_masked: dict[str, int] = {}
        self._reward_timeouts: dict[str, int] = {}
        self._synced_step: int | None = None
        reward_funcs = [ObjectiveRewardFunction(composer, k) for k in range(len(composer.objectives))]
        with warnings.catch_warnings():
            # rollout_func is the hook this learner is built on (pinned TRL range, tests/test_trl_seams.py)
            warnings.filterwarnings("ignore", message="You are using 'rollout_func'", category=UserWarning)
            super().__init__(reward_funcs=reward_funcs, rollout_func=self._rollout, **kwargs)

    # -- rollout ---------------------------------------------------------------------------------------------
    def _sync_rollout_weights(self) -> None:
        """Push the policy to an engine holding its own copy (vLLM, a rollout server) once per optimizer step.

        Runs before the first generation after each update (and once at the start, which also covers resume).
        The parameters are gathered under ZeRO-3; a shared server is pushed to by the main process only, a
        colocated engine by every process; everyone waits until it is done. Engines without a `weight_sync`
        (the transformers engine shares the learner's model) need nothing.
        """
        sync = getattr(self.rollout_engine, "weight_sync", None)
        if sync is None or self._synced_step == self.state.global_step:
            return
        # A sync needs the full parameters: always gathered under ZeRO-3, whatever ds3_gather_for_generation says.
        model = self.model_wrapped
        with unwrap_model_for_generation(model, self.accelerator, gather_deepspeed3_params=True) as unwrapped:
            if self.accelerator.is_main_process or not sync.shared:
                stats = sync(unwrapped)
                self._metrics["train" if self.model.training else "eval"]["rollout/sync_seconds"].append(stats.seconds)
        self.accelerator.wait_for_everyone()
        self._synced_step = self.state.global_step

    def _sample_policy(self, prompts: list[Prompt], params: SamplingParams) -> list[Sample]:
        """One sample per entry of `prompts` from the current policy (engine synced or pointed at the model)."""
        self._sync_rollout_weights()
        using = getattr(self.rollout_engine, "using", None)
        if using is None:
            return generate_for_prompts(self.rollout_engine, prompts, params)
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
            ) as unwrapped,
            using(unwrapped),
        ):
            return generate_for_prompts(self.rollout_engine, prompts, params)

    def _rollout(self, prompts: list[Prompt], trainer: Any) -> dict[str, Any]:
        samples = self._sample_policy(prompts, self.sampling)
        fleet_metrics = getattr(self.rollout_engine, "step_metrics", None)  # a fleet: live and lost servers
        if fleet_metrics is not None:
            for key, value in fleet_metrics().items():
                self._metrics["train" if self.model.training else "eval"][key].append(value)
        return {
            "prompt_ids": [s.prompt_ids for s in samples],
            "completion_ids": [s.completion_ids for s in samples],
            "logprobs": [s.logprobs for s in samples],
        }

    def _get_train_sampler(self, dataset: Any = None) -> EpochSeededRepeatSampler:
        return EpochSeededRepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            shuffle=self.shuffle_dataset,
            seed=self.args.seed,
        )

    # -- rewards ---------------------------------------------------------------------------------------------
    def _calculate_rewards(
        self, inputs: list[dict[str, Any]], prompts: list[Any], completions: list[Any], completion_ids_list: list[Any]
    ) -> torch.Tensor:
        skip = {"prompt", "completion", "completion_ids"}
        columns = {key: [row.get(key) for row in inputs] for key in inputs[0] if key not in skip}
        columns["completion_ids"] = completion_ids_list
        result = self.composer.score(prompts, completions, **columns)
        device = self.accelerator.device
        local = torch.tensor(result.matrix, dtype=torch.float32, device=device)
        names = self.composer.names
        counts = torch.tensor(
            [
                [result.failures[n] for n in names],
                [result.masked.get(n, 0) for n in names],
                [result.timeouts.get(n, 0) for n in names],
            ],
            dtype=torch.float32,
            device=device,
        )
        failures, masked, timeouts = gather(counts.unsqueeze(0)).sum(dim=0).tolist()  # summed over processes
        self._reward_failures = dict(zip(names, failures))
        self._reward_masked = dict(zip(names, masked))
        self._reward_timeouts = dict(zip(names, timeouts))
        self._reward_matrix = gather(local)
        return self._reward_matrix

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        assert self._reward_matrix is not None
        matrix = self._reward_matrix.double().cpu().numpy()
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        step = int(self.state.global_step)
        if mode == "train":
            self._measure_policy(output, matrix, group_size, local, step)
        composition = self.composer.compose(matrix, group_size)
        advantages = output["advantages"]
        output["advantages"] = torch.as_tensor(
            composition.advantages[local], dtype=advantages.dtype, device=advantages.device
        )
        metrics = self._metrics[mode]
        composite_mean = self._log_composite_reward(metrics, composition, group_size)
        metrics["reward/composite"].append(composite_mean)
        for name, weight in zip(self.composer.names, composition.weights):
            metrics[f"weights/{name}"].append(float(weight))
            metrics[f"rewards/{name}/failures"].append(float(self._reward_failures.get(name, 0)))
            metrics[f"rewards/{name}/masked"].append(float(self._reward_masked.get(name, 0)))
            metrics[f"rewards/{name}/timeouts"].append(float(self._reward_timeouts.get(name, 0)))
        for key, value in composition.metrics.items():
            metrics[f"weighting/{key}"].append(float(value))
        if mode == "train":
            self.composer.update(matrix, step=step)
        return output

    def _log_composite_reward(
        self, metrics: dict[str, list[float]], composition: Composition, group_size: int
    ) -> float:
        """Replace TRL's `reward`, `reward_std` and `frac_reward_zero_std` of this step (computed from the static
        `reward_weights`) by those of the composite reward the advantages come from; returns its mean."""
        rewards = composition.rewards
        finite = rewards[np.isfinite(rewards)]
        mean = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            group_std = np.nanstd(rewards.reshape(-1, group_size), axis=1, ddof=1)
        zero_std = float(np.mean(np.nan_to_num(group_std, nan=0.0) < 1e-8))
        for key, value in (("reward", mean), ("reward_std", std), ("frac_reward_zero_std", zero_std)):
            if metrics[key]:
                metrics[key][-1] = value
            else:
                metrics[key].append(value)
        return mean

    def _measure_policy(
        self, output: dict[str, Any], matrix: np.ndarray, group_size: int, local: slice, step: int
    ) -> None:
        """Hand the weighting strategy what it asked for about the policy as it stands, before this step is
        composed: a held-out point (hypervolume, source eval) and per-objective gradients (gradient weighting)."""
        if self.composer.wants_eval(step):
            point = self._heldout_point(step)
            self.composer.update(np.empty((0, matrix.shape[1])), step=step, eval_point=point)
        if self.composer.wants_gradients(step):
            gradients, norms = self._objective_gradients(output, matrix, group_size, local)
            self.composer.update(
                matrix,
                step=step,
                gradients=gradients,
                grad_norms=norms,
                learning_rate=float(self.lr_scheduler.get_last_lr()[0]),
                peak_learning_rate=float(self.args.learning_rate),
            )

    def _heldout_point(self, step: int) -> np.ndarray:
        """Per-objective means [K] of the current policy on the held-out prompts (all processes together).

        Each process generates for its share of the prompts under a forked RNG (seeded by the run's seed and the
        step, so the pass neither disturbs training's random stream nor differs on resume); sums and counts are
        added up over processes. Logs the point as heldout/<objective> and the pass's seconds.
        """
        if self.heldout is None:
            raise RuntimeError("the weighting strategy asks for held-out passes but the trainer has no held-out set")
        start = time.perf_counter()
        prompts, columns = self.heldout.share(self.accelerator.process_index, self.accelerator.num_processes)
        seed = int(np.random.SeedSequence([int(self.args.seed), step]).generate_state(1)[0] >> 1)
        params = dataclasses.replace(self.heldout.params, seed=seed)
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            samples = self._sample_policy(prompts, params)
        sums = torch.tensor(score_sums(self.composer, prompts, samples, columns), device=self.accelerator.device)
        totals = gather(sums.unsqueeze(0)).sum(dim=0).double().cpu().numpy()
        point = point_from_sums(totals)
        metrics = self._metrics["train"]
        for name, value in zip(self.composer.names, point):
            metrics[f"heldout/{name}"].append(float(value))
        metrics["heldout/seconds"].append(time.perf_counter() - start)
        return point

    def _objective_gradients(
        self, inputs: dict[str, Any], matrix: np.ndarray, group_size: int, local: slice
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-objective policy gradients g[K, P] over the strategy's layer band, and their norms [K] over every
        trainable parameter (LoRA adapters with PEFT).

        For gradient-based weighting (Lu et al., arXiv 2509.11452, SPECS 2b): objective k's advantages come
        from r_k alone (normalised as the composer does), the GRPO loss on this batch is differentiated with
        those advantages, and the gradients are averaged over processes. The authors clip each objective's
        whole-model gradient at 1.0 and then keep layers 10..25: the norms returned here are the whole-model
        ones the strategy clips by, the vectors the band's (``layer_band``; all trainable parameters when None).
        Costs K extra backward passes. TRL's per-call loss metrics are rolled back so that logs count each step
        once.
        """
        band = getattr(self.composer.weighting, "layer_band", None)
        named = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        selected = torch.tensor([in_layer_band(name, band) for name, _ in named], dtype=torch.bool)
        keep = None if band is None else selected.repeat_interleave(torch.tensor([p.numel() for p in params]))
        per_objective = self.composer.objective_advantages(matrix, group_size)[local]
        mode_metrics = self._metrics["train"]
        lengths = {key: len(values) for key, values in mode_metrics.items()}
        vectors, norms = [], []
        try:
            for k in range(per_objective.shape[1]):
                advantages = torch.as_tensor(per_objective[:, k], dtype=inputs["advantages"].dtype)
                loss = self._compute_loss(self.model, {**inputs, "advantages": advantages.to(self.accelerator.device)})
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat = torch.cat(
                    [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
                )
                flat = self.accelerator.reduce(flat.detach().float(), reduction="mean")
                norms.append(torch.linalg.vector_norm(flat.double()).item())
                vectors.append(flat if keep is None else flat[keep.to(flat.device)])
        finally:
            for key in list(mode_metrics):
                if key in lengths:
                    del mode_metrics[key][lengths[key] :]
                else:
                    del mode_metrics[key]
        return torch.stack(vectors).cpu().numpy().astype(np.float64), np.asarray(norms)

    # -- checkpoints -----------------------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"composer": self.composer.state_dict(), "global_step": int(self.state.global_step)}

    def load_extra_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.composer.load_state_dict(state["composer"])
