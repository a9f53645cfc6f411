"""Errors raised by the reward library for bad specifications and failing components."""


class RewardConfigError(ValueError):
    """A reward specification is wrong (unknown name, bad argument, bad threshold); the message names it."""


class RewardComponentError(RuntimeError):
    """A component failed on every row of a batch, so its objective cannot be scored at all."""
