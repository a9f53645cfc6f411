"""The rollout worker: the only place that generates text (GRPO samples, on-policy pairs, evaluation)."""

from rollout.base import RolloutEngine, Sample, SamplingParams

__all__ = ["RolloutEngine", "Sample", "SamplingParams"]
