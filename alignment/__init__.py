"""Learners, losses, recipes and commands of the reward-composition alignment trainer."""

__version__ = "0.1.0"
