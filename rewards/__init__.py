"""Reward composition: components, masks, normalisation, weighting and Pareto utilities.

This package knows nothing of trainers. A component maps (prompts, completions, extra columns) to one float
per completion (None/NaN = not applicable); the composer turns K components into the [N, K] matrix R and
from it the composite rewards and advantages a learner consumes.
"""
