"""The reward composer: K components -> R[N, K] -> weighted composite rewards and advantages.

Scoring (`score`) calls every component on a batch, turning a raised exception on a row, or a value that is
NaN, infinite or beyond +-`max_abs` (default `MAX_ABS_REWARD` = 1e9), into NaN (not applicable) for that row and
objective and counting it as a failure; a component that fails on every row of a batch (raises or returns such
values) stops with `RewardComponentError` naming it. The bound keeps every later sum, mean and std far from
float64 (and float32) overflow, so one broken objective cannot turn the composite into inf/NaN and silence the
healthy ones; the normalisation functions are overflow-safe for any finite input on top of that. With a
per-call `timeout` (per objective, or the composer's default) each call runs in a daemon worker thread with that
deadline; a call that hangs makes its rows NaN, counted as timeouts (which never stop a run), and the hung
thread is abandoned (it never blocks the process from exiting). Objectives with a
length condition (`masks`, BalCapRL arXiv 2605.07394, see `rewards.masking`) are then masked, so logs and
every later step see the masked values; masked rows are counted per objective. Composition (`compose`)
weights the matrix with the current weights of the weighting strategy and normalises it into advantages,
applying the strategy's optional hooks (reward / advantage scale, or its own `combine`; see
`rewards.weighting`); `update` hands the step's matrix (and context such as gradients or an evaluation point)
to the strategy so it can set the next step's state.

Learner's order per step: `score` (per process) -> gather R[N, K] -> measurements of the current policy, each
handed to `update` BEFORE composing this step: a held-out point when `wants_eval(step)` (`update(empty [0, K],
eval_point=...)`), per-objective policy gradients from `objective_advantages(R, G)` when `wants_gradients(step)`
(`update(R, gradients=[K, P] or gram=[K, K], ...)`) -> `compose(R, G)` -> `update(R, step=...)` (batch
statistics; before or after the optimiser step is the same).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rewards.base import RewardComponent
from rewards.errors import RewardComponentError, RewardConfigError
from rewards.masking import LengthCondition, apply_length_masks
from rewards.normalization import decoupled_advantages, group_advantages, objective_advantages, weighted_sum
from rewards.weighting import StaticWeights, WeightingStrategy

Normalization = Literal["group", "batch", "none", "decoupled"]

# Largest magnitude a reward component may return; beyond it a value counts as a failure (see the module
# docstring). Far above any real reward scale (word counts, logits, scores in [0, 1]), far below overflow.
MAX_ABS_REWARD = 1e9
# Largest magnitude of a composer's starting weights: with rewards within +-1e9, a weighted sum of any number of
# objectives stays far below float64 overflow (a strategy's later weights are handled by the normalisation).
MAX_ABS_WEIGHT = 1e12

logger = logging.getLogger(__name__)


@dataclass
class Objective:
    """One named objective of the composition; `timeout` (seconds per component call, None = the composer's
    default) bounds how long one call may take before its rows count as timed out."""

    name: str
    component: RewardComponent
    timeout: float | None = None


@dataclass
class ScoreResult:
    """Per-objective scores of a batch: matrix R[N, K] (NaN = not applicable, masks applied), failure counts
    (rows made NaN by an exception, a NaN/inf value, a value beyond the composer's `max_abs`, or a timeout), of
    those the rows lost to a timeout, seconds spent per objective, and per objective the number of rows its
    length condition replaced."""

    matrix: np.ndarray
    failures: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    masked: dict[str, int] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)


@dataclass
class Composition:
    """What a learner consumes for one step: composite rewards [N], advantages [N], the weights used [K].

    `rewards` are what was normalised (including a strategy's reward scale); `metrics` are the strategy's extra
    scalars to log (meta factor, multipliers, ...), plus "reward_scale"/"advantage_scale" when not 1.
    """

    rewards: np.ndarray
    advantages: np.ndarray
    weights: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)


class RewardTimeout(Exception):
    """A component call did not return within its objective's timeout."""


def _call_component(
    component: RewardComponent,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: dict[str, Sequence[Any]],
    timeout: float | None = None,
) -> list[float | None]:
    """The component's values for one call, checked for shape; RewardTimeout when it exceeds `timeout` seconds."""
    values = _with_deadline(lambda: component(list(prompts), list(completions), **columns), timeout, component)
    if not isinstance(values, list | tuple | np.ndarray):
        raise TypeError(f"returned {type(values).__name__}, expected a list of floats")
    if len(values) != len(completions):
        raise ValueError(f"returned {len(values)} values for {len(completions)} completions")
    return list(values)


def _with_deadline(call: Callable[[], Any], timeout: float | None, component: RewardComponent) -> Any:
    """`call()` in a daemon worker thread, waiting at most `timeout` seconds (None: called directly).

    On timeout the thread is abandoned: Python cannot stop a thread, but a daemon thread never keeps the
    process alive. A call that holds the GIL for ever (a C extension that never releases it) cannot be
    interrupted this way; calls that block, sleep or loop in Python can.
    """
    if timeout is None:
        return call()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = err
        finally:
            done.set()

    name = getattr(component, "name", type(component).__name__)
    threading.Thread(target=run, name=f"reward-{name}", daemon=True).start()
    if not done.wait(timeout):
        raise RewardTimeout(f"no result within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _hook(strategy: Any, name: str, default: Callable[..., Any]) -> Callable[..., Any]:
    """The strategy's optional hook `name` (see rewards.weighting), or `default` when it has none."""
    hook = getattr(strategy, name, None)
    return hook if callable(hook) else default


def _convert(raw: list[Any], max_abs: float = MAX_ABS_REWARD) -> tuple[np.ndarray, int, Any]:
    """Values [N] float64 with None, NaN, inf and |v| > max_abs as NaN; the failure count (those that were not
    None); and the first failing value as returned (None when there is none).

    Vectorised for the common case (numbers and None); anything NumPy cannot convert goes value by value,
    raising as `float()` does.
    """
    try:
        values = np.asarray(raw, dtype=np.float64)  # None becomes NaN
        if values.shape != (len(raw),):
            raise ValueError(f"expected {len(raw)} scalars, got shape {values.shape}")
    except (TypeError, ValueError):
        values = np.array([_to_float(v, max_abs) for v in raw], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(values) <= max_abs)  # NaN, inf and out of range
    if not bad.any():
        return values, 0, None
    failed = [i for i in np.flatnonzero(bad) if raw[i] is not None]
    values = values.copy()
    values[bad] = math.nan
    return values, len(failed), (raw[failed[0]] if failed else None)


def _to_float(value: Any, max_abs: float = MAX_ABS_REWARD) -> float:
    """`value` as a float; NaN for None, NaN, inf and values beyond +-max_abs. Raises as `float()` does."""
    if value is None:
        return math.nan
    number = float(value)
    return number if abs(number) <= max_abs else math.nan


class _InvalidValue(ValueError):
    """A component returned a value that is not a usable reward (NaN, inf, beyond the magnitude bound)."""


def _invalid_value_error(value: Any, max_abs: float) -> _InvalidValue:
    try:
        shown = repr(float(value))
    except (TypeError, ValueError, OverflowError):
        shown = repr(value)[:60]
    return _InvalidValue(
        f"returned {shown}, which is not a finite number within +-{max_abs:g} (return None for rows the "
        "objective does not apply to)"
    )


@dataclass
class _ObjectiveScores:
    values: np.ndarray
    failures: int
    timeouts: int


def _score_objective(
    objective: Objective,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    timeout: float | None = None,
    max_abs: float = MAX_ABS_REWARD,
) -> _ObjectiveScores:
    """One objective's values [N] (NaN = not applicable or failed), its failure count and, of those, timeouts.

    A component that raises or times out on the batch is retried row by row (each call under the same
    timeout); rows that still raise, return NaN, inf or a value beyond +-max_abs, or time out become NaN. Once
    one row has timed out, the remaining rows of the batch are not called again but counted as timed out, so a
    component that hangs costs at most two timeouts per batch. If every row failed (raised or returned such a
    value), RewardComponentError names the objective and the first error; timeouts never stop the run.
    """
    n = len(completions)
    try:
        raw_values = _call_component(objective.component, prompts, completions, columns, timeout)
        values, failed, first_bad = _convert(raw_values, max_abs)
    except RewardTimeout as err:
        first_error: Exception = err
        _warn_timeout(objective, len(completions), timeout)
    except Exception as batch_error:  # noqa: BLE001 - any component error becomes per-row NaN
        first_error = batch_error
    else:
        if n and failed == n:
            _stop(objective, n, _invalid_value_error(first_bad, max_abs))
        return _ObjectiveScores(values, failed, 0)
    values_list, raised, invalid, timeouts = [], 0, 0, 0
    first_row_error: Exception | None = None
    for i in range(n):
        if timeouts:
            values_list.append(math.nan)
            timeouts += 1
            continue
        row_columns = {key: [col[i]] for key, col in columns.items()}
        try:
            raw = _call_component(objective.component, [prompts[i]], [completions[i]], row_columns, timeout)[0]
            value = _to_float(raw, max_abs)
            if raw is not None and math.isnan(value):
                invalid += 1
                first_row_error = first_row_error or _invalid_value_error(raw, max_abs)
            values_list.append(value)
        except RewardTimeout:
            values_list.append(math.nan)
            timeouts += 1
        except Exception as row_error:  # noqa: BLE001
            values_list.append(math.nan)
            raised += 1
            first_row_error = first_row_error or row_error
    if n and raised + invalid == n:
        _stop(objective, n, first_row_error or first_error)
    return _ObjectiveScores(np.asarray(values_list, dtype=np.float64), raised + invalid + timeouts, timeouts)


def _stop(objective: Objective, rows: int, error: BaseException) -> None:
    """Raise the RewardComponentError of an objective that failed on every one of `rows` rows."""
    detail = str(error) if isinstance(error, _InvalidValue) else f"{type(error).__name__}: {error}"
    first_line = detail.strip().splitlines()[0] if detail.strip() else type(error).__name__
    cause = None if isinstance(error, _InvalidValue) else error
    raise RewardComponentError(
        f"reward objective {objective.name!r} failed on all {rows} rows: {first_line}"
    ) from cause


_warned_timeouts: set[str] = set()


def _warn_timeout(objective: Objective, rows: int, timeout: float | None) -> None:
    """Log (once per objective name) that a call timed out and its rows are retried one by one."""
    if objective.name in _warned_timeouts:
        return
    _warned_timeouts.add(objective.name)
    logger.warning(
        "reward objective %r: a call on %d rows gave no result within %g s; retrying row by row, rows that time "
        "out count as rewards/%s/timeouts (further timeouts are not logged)",
        objective.name,
        rows,
        timeout,
        objective.name,
    )


class RewardComposer:
    """Composes K reward components into one training signal (see the module docstring)."""

    def __init__(
        self,
        objectives: Sequence[Objective],
        weighting: WeightingStrategy,
        normalization: Normalization = "group",
        masks: Mapping[str, LengthCondition] | None = None,
        timeout: float | None = None,
        max_abs: float = MAX_ABS_REWARD,
    ) -> None:
        if not objectives:
            raise RewardConfigError("a composer needs at least one objective")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise RewardConfigError(f"objective names must be unique, got {names}")
        if normalization not in ("group", "batch", "none", "decoupled"):
            raise RewardConfigError(
                f"normalization: {normalization!r} is not allowed; choose group, batch, none or decoupled"
            )
        weights = weighting.weights()
        if weights.shape != (len(objectives),):
            raise RewardConfigError(f"{len(objectives)} objectives ({', '.join(names)}) but {weights.size} weights")
        if not np.all(np.abs(weights) <= MAX_ABS_WEIGHT):
            raise RewardConfigError(
                f"weights: {weights.tolist()} must be finite and within +-{MAX_ABS_WEIGHT:g} (rewards are within "
                f"+-{MAX_ABS_REWARD:g}; scale them instead)"
            )
        for name, seconds in [("timeout", timeout)] + [(f"{o.name}.timeout", o.timeout) for o in objectives]:
            if seconds is not None and not (isinstance(seconds, int | float) and 0 < seconds < math.inf):
                raise RewardConfigError(f"{name}: must be a positive number of seconds or None, got {seconds!r}")
        if isinstance(max_abs, bool) or not isinstance(max_abs, int | float) or not 0 < max_abs <= MAX_ABS_REWARD:
            raise RewardConfigError(f"max_abs: must be a number in (0, {MAX_ABS_REWARD:g}], got {max_abs!r}")
        masks = dict(masks or {})
        for name, condition in masks.items():
            if name not in names:
                raise RewardConfigError(f"masks: {name!r} is not an objective; objectives are {', '.join(names)}")
            if not isinstance(condition, LengthCondition):
                raise RewardConfigError(f"masks.{name}: expected a LengthCondition, got {type(condition).__name__}")
        self.objectives = list(objectives)
        self.weighting = weighting
        self.normalization: Normalization = normalization
        self.masks: dict[str, LengthCondition] = masks
        self.timeout = timeout
        self.max_abs = float(max_abs)

    @classmethod
    def static(
        cls,
        components: Sequence[RewardComponent],
        weights: Sequence[float],
        normalization: Normalization = "group",
        masks: Mapping[str, LengthCondition] | None = None,
    ) -> RewardComposer:
        """A composer with fixed weights; objectives are named after their components."""
        objectives = [Objective(c.name, c) for c in components]
        return cls(objectives, StaticWeights(weights), normalization, masks)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    def timeout_of(self, index: int) -> float | None:
        """Seconds one call of objective `index` may take: its own timeout, else the composer's (None = no limit)."""
        own = self.objectives[index].timeout
        return own if own is not None else self.timeout

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]) -> ScoreResult:
        """Score N completions with every objective: R[N, K] float64, NaN = not applicable or failed.

        A component that raises or times out on the batch is retried row by row; rows that still raise, time
        out or give NaN, inf or a value beyond +-`max_abs` become NaN and are counted in `failures` (timeouts
        also in `timeouts`). If every row fails (raises or gives such a value), RewardComponentError names the
        objective and the first error. Length conditions are applied last (`apply_masks`).
        """
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions")
        matrix = np.full((n, len(self.objectives)), np.nan, dtype=np.float64)
        failures: dict[str, int] = {}
        timeouts: dict[str, int] = {}
        seconds: dict[str, float] = {}
        for k, objective in enumerate(self.objectives):
            start = time.perf_counter()
            scores = _score_objective(objective, prompts, completions, columns, self.timeout_of(k), self.max_abs)
            matrix[:, k] = scores.values
            failures[objective.name], timeouts[objective.name] = scores.failures, scores.timeouts
            seconds[objective.name] = time.perf_counter() - start
        matrix, masked = self.apply_masks(matrix, completions, columns)
        return ScoreResult(matrix=matrix, failures=failures, seconds=seconds, masked=masked, timeouts=timeouts)

    def score_objective(
        self, index: int, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> np.ndarray:
        """Scores [N] of objective `index` alone, with the same failure handling and length condition as `score`."""
        objective = self.objectives[index]
        timeout = self.timeout_of(index)
        values = _score_objective(objective, prompts, completions, columns, timeout, self.max_abs).values
        if objective.name not in self.masks:
            return values
        masked, _ = apply_length_masks(values[:, None], [objective.name], self.masks, completions, columns)
        return masked[:, 0]

    def apply_masks(
        self, matrix: np.ndarray, completions: Sequence[Any], columns: Mapping[str, Sequence[Any]]
    ) -> tuple[np.ndarray, dict[str, int]]:
        """R[N, K] with each objective's length condition applied (a copy), and the masked-row count per objective.

        Rows outside the band get 0 or NaN (the condition's `outside`); rows already NaN are left alone and
        not counted. A condition that cannot be evaluated (missing column) raises RewardConfigError naming it.
        """
        if not self.masks:
            return matrix, {name: 0 for name in self.names}
        return apply_length_masks(matrix, self.names, self.masks, completions, columns)

    def compose(self, matrix: np.ndarray, group_size: int) -> Composition:
        """Composite rewards and advantages from R[N, K] with the current state; rows grouped by prompt.

        If the strategy has a `combine` hook that returns (rewards, advantages), those are used. Otherwise
        c = reward_scale * sum_k w_k R_k is normalised (decoupled: per objective, with weights reward_scale * w)
        and the advantages are multiplied by advantage_scale. Both scales default to 1.
        """
        if matrix.ndim != 2 or matrix.shape[1] != len(self.objectives):
            raise ValueError(f"expected a reward matrix [N, {len(self.objectives)}], got shape {matrix.shape}")
        weights = self.weighting.weights()
        metrics = dict(_hook(self.weighting, "metrics", dict)())
        combine = getattr(self.weighting, "combine", None)
        combined = combine(matrix, group_size, self.normalization) if combine is not None else None
        if combined is not None:
            rewards, advantages = combined
            return Composition(rewards=rewards, advantages=advantages, weights=weights, metrics=metrics)
        reward_scale = float(_hook(self.weighting, "reward_scale", lambda: 1.0)())
        advantage_scale = float(_hook(self.weighting, "advantage_scale", lambda: 1.0)())
        scaled = weights * reward_scale
        rewards = weighted_sum(matrix, scaled)
        if self.normalization == "decoupled":
            advantages = decoupled_advantages(matrix, scaled, group_size)
        else:
            advantages = group_advantages(rewards, group_size, scale=self.normalization)
        if advantage_scale != 1.0:
            advantages = advantages * advantage_scale
            metrics["advantage_scale"] = advantage_scale
        if reward_scale != 1.0:
            metrics["reward_scale"] = reward_scale
        return Composition(rewards=rewards, advantages=advantages, weights=weights, metrics=metrics)

    def objective_advantages(self, matrix: np.ndarray, group_size: int) -> np.ndarray:
        """Per-objective advantages A[N, K], each objective normalised alone with this composer's normalisation.

        What the gradient-based weighting's per-objective gradients g_k are computed from (Lu et al., arXiv
        2509.11452); "decoupled" gives the per-objective group z-scores.
        """
        return objective_advantages(matrix, group_size, self.normalization)

    def wants_gradients(self, step: int) -> bool:
        """Whether the strategy wants per-objective gradients passed to `update` at this step (default no)."""
        return bool(_hook(self.weighting, "wants_gradients", lambda step: False)(step))

    def wants_eval(self, step: int) -> bool:
        """Whether the strategy wants a held-out measurement of the policy at this step (default no)."""
        return bool(_hook(self.weighting, "wants_eval", lambda step: False)(step))

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        """Let the weighting strategy see this step's R[N, K] and set its state for the next step.

        Context: `step` (always, from the learner), and per strategy `eval_point` [K] (hypervolume),
        `gradients` [K, P] or `gram` [K, K], `grad_norms` [K], `learning_rate`, `peak_learning_rate` and
        optionally `eta` (gradient).
        """
        self.weighting.update(matrix, **context)

    def state_dict(self) -> dict[str, Any]:
        """The composer's mutable state (the weighting strategy's), JSON-serialisable."""
        return {"objectives": self.names, "weighting": self.weighting.name, "state": self.weighting.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; objectives and strategy must match."""
        if state.get("objectives") != self.names or state.get("weighting") != self.weighting.name:
            raise RewardConfigError(
                f"saved composer state is for objectives {state.get('objectives')} with "
                f"{state.get('weighting')!r} weighting; this run has {self.names} with {self.weighting.name!r}"
            )
        self.weighting.load_state_dict(state["state"])
