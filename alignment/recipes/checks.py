"""The checks recipe sections share: one-line ConfigErrors naming the field, and the bounds on numbers."""

from __future__ import annotations

from alignment.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range (transformers seeds numpy, random and torch with it)
MAX_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer waits overflow the OS's timers and are never meant
MAX_RETRIES = 100
MAX_BACKOFF_S = 3600.0


def check(condition: bool, where: str, message: str) -> None:
    """ConfigError("{where}: {message}") unless `condition`."""
    if not condition:
        raise ConfigError(f"{where}: {message}")


def check_timeout(value: float | None, where: str, allow_null: bool = True) -> None:
    """A timeout in seconds: null (when allowed) or in (0, a week]."""
    if value is None:
        return
    check(value > 0, where, f"must be a positive number of seconds, got {value}")
    check(
        value <= MAX_TIMEOUT_S,
        where,
        f"must be at most {MAX_TIMEOUT_S:g} seconds (a week){'; null for no limit' if allow_null else ''}, "
        f"got {value:g}",
    )
