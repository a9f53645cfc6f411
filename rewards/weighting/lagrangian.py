"""Lagrangian multipliers as weights (Moskovitz et al., ICLR 2024, "Confronting Reward Model Overoptimization
with Constrained RLHF"; safe-rlhf's PPO-Lag as an option): the multiplier maths as pure functions, then the
strategy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rewards.errors import RewardConfigError
from rewards.normalization import decoupled_advantages, objective_advantages, weighted_sum
from rewards.weighting.base import check_matrix, load_vector, nanmean_columns

Direction = Literal["lower", "upper", "equal"]
Parametrization = Literal["squashed", "identity", "log"]
LagrangianForm = Literal["moskovitz", "unsquashed", "safe_rlhf"]

_DIRECTIONS = ("lower", "upper", "equal")
LAMBDA_CEILING = 1e6


def _per_constraint(value: str | Sequence[str], n: int, allowed: Sequence[str], name: str) -> list[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} needs {n} entries, got {len(values)}")
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name}: {v!r} is not allowed; choose {', '.join(allowed)}")
    return values


def direction_signs(direction: str | Sequence[str], n: int) -> np.ndarray:
    """d [n]: +1 for a lower bound (J >= theta) and for equality, -1 for an upper bound (J <= theta)."""
    return np.array([-1.0 if d == "upper" else 1.0 for d in _per_constraint(direction, n, _DIRECTIONS, "direction")])


def squash(lmbda: Any, kind: str | Sequence[str] = "inequality") -> np.ndarray:
    """s(lambda) [C]: sigmoid for an inequality constraint (s in (0, 1)), tanh for equality (s in (-1, 1)).

    Moskovitz et al. (ICLR 2024): bounded multipliers keep the mixed advantage's scale bounded.
    """
    x = np.asarray(lmbda, dtype=np.float64)
    kinds = _per_constraint(kind, x.size, ("inequality", "equality"), "kind")
    eq = np.array([k == "equality" for k in kinds]).reshape(x.shape)
    return np.where(eq, np.tanh(x), 0.5 * (1.0 + np.tanh(0.5 * x)))


def multiplier_values(lmbda: Any, direction: str | Sequence[str], parametrization: Parametrization) -> np.ndarray:
    """The multipliers as used in the mix [C]: squash(lambda) ("squashed"), lambda ("identity") or exp(lambda)
    ("log", safe-rlhf's log-lambda parameter)."""
    x = np.asarray(lmbda, dtype=np.float64)
    if parametrization == "squashed":
        dirs = _per_constraint(direction, x.size, _DIRECTIONS, "direction")
        return squash(x, ["equality" if d == "equal" else "inequality" for d in dirs])
    if parametrization == "identity":
        return x.copy()
    if parametrization == "log":
        return np.exp(x)
    raise ValueError(f"parametrization: {parametrization!r} is not allowed; choose squashed, identity or log")


def multiplier_step(
    lmbda: Any,
    J: Any,
    theta: Any,
    direction: str | Sequence[str] = "lower",
    lr: float = 0.1,
    momentum: float = 0.1,
    velocity: Any = None,
    *,
    parametrization: Parametrization = "squashed",
    max_grad_norm: float | None = None,
    max_value: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One SGD(+momentum) step on the multiplier loss L = sum_i s(lambda_i) * d_i * (J_i - theta_i).

    Moskovitz et al. (ICLR 2024) minimise L_lambda = sum_i s(lambda_i) (J_i - theta_i) with SGD (lr 0.1,
    momentum 0.1 in their code, as torch.optim.SGD: v <- mu * v + grad; lambda <- lambda - lr * v).
    Sign convention (d_i, see `direction_signs`), which makes the multiplier RISE while its constraint is
    violated and FALL once it is met:

    * "lower" (J >= theta, d = +1; the authors' case): J < theta gives a negative gradient, lambda rises, and
      the mix pushes J up with weight +s.
    * "upper" (J <= theta, d = -1): J > theta raises lambda; the mix pushes J down with weight -s.
    * "equal" (J = theta, d = +1, tanh): lambda rises while J < theta and falls (through 0 to negative, which
      pushes J down) while J > theta; the gradient vanishes at J = theta.

    Args:
        lmbda: the parameters [C] (squashed: pre-squash lambda; identity: lambda; log: log lambda).
        J: [C] batch means of the constrained rewards (detached); a NaN entry (no data) leaves that
            multiplier and its velocity unchanged.
        theta: [C] thresholds.
        direction: "lower", "upper" or "equal", one or per constraint.
        lr, momentum: SGD settings (lr > 0, momentum >= 0).
        velocity: [C] momentum buffer (None = zeros).
        parametrization: "squashed" (sigmoid/tanh), "identity" (unsquashed; inequality multipliers projected
            onto lambda >= 0 after the step, as the authors clamp), "log" (safe-rlhf: lambda = exp(param), the
            loss -(J_c - threshold) * lambda for a cost c is the "upper" case here).
        max_grad_norm: clip the gradient vector's norm first (the authors' code clips at the policy's
            max_grad_norm); None = no clip.
        max_value: upper bound on lambda for "identity" and "log" (safe-rlhf's lambda_max); None = none, except
            that the log parametrisation is always capped at LAMBDA_CEILING = 1e6: its gradient carries a factor
            lambda, so a long violation grows lambda super-exponentially and would overflow to inf / NaN.

    Returns:
        (new parameters [C], new velocity [C]).
    """
    x = np.asarray(lmbda, dtype=np.float64).reshape(-1).copy()
    n = x.size
    j = np.asarray(J, dtype=np.float64).reshape(-1)
    t = np.asarray(theta, dtype=np.float64).reshape(-1)
    if j.size != n or t.size != n:
        raise ValueError(f"lmbda, J and theta need the same length, got {n}, {j.size}, {t.size}")
    v = np.zeros(n) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(-1).copy()
    dirs = _per_constraint(direction, n, _DIRECTIONS, "direction")
    d = direction_signs(dirs, n)
    if parametrization == "squashed":
        s = multiplier_values(x, dirs, "squashed")
        eq = np.array([k == "equal" for k in dirs])
        ds = np.where(eq, 1.0 - s**2, s * (1.0 - s))
    elif parametrization == "identity":
        ds = np.ones(n)
    elif parametrization == "log":
        if "equal" in dirs:
            raise ValueError("the log parametrisation keeps lambda > 0 and cannot express an equality constraint")
        ds = np.exp(x)
    else:
        raise ValueError(f"parametrization: {parametrization!r} is not allowed; choose squashed, identity or log")
    valid = np.isfinite(j)
    grad = np.where(valid, ds * d * (np.where(valid, j, 0.0) - t), 0.0)
    if max_grad_norm is not None:
        norm = float(np.linalg.norm(grad))
        if norm > max_grad_norm:
            grad = grad * (max_grad_norm / norm)
    v_new = np.where(valid, momentum * v + grad, v)
    x_new = np.where(valid, x - lr * v_new, x)
    if parametrization == "identity":
        ineq = np.array([k != "equal" for k in dirs])
        x_new = np.where(ineq, np.maximum(x_new, 0.0), x_new)
        if max_value is not None:
            x_new = np.minimum(x_new, max_value)
    elif parametrization == "log":
        x_new = np.minimum(x_new, math.log(LAMBDA_CEILING if max_value is None else min(max_value, LAMBDA_CEILING)))
    return x_new, v_new


def mixed_advantages(A_base: Any, A_k: Any, s: Any, signs: Any = None) -> np.ndarray:
    """Moskovitz et al.'s squashed mix A = (C - sum_i s_i) * A_base + sum_i d_i s_i A_i -> [N].

    Args:
        A_base: [N] advantage of what is maximised (zeros for the KL-only variant, where the KL is the
            learner's own beta term).
        A_k: [N, C] per-constraint advantages.
        s: [C] squashed multipliers.
        signs: [C] d_i (+1 lower/equality, -1 upper bound); None = all +1 (the authors' code).

    C is the number of CONSTRAINED components (the "K" of the SPECS formula, the authors' n_constraints):
    each constraint trades (1 - s_i) of the base against s_i of its own advantage, so the factors sum to C.
    """
    a_k = np.asarray(A_k, dtype=np.float64)
    sv = np.asarray(s, dtype=np.float64).reshape(-1)
    d = np.ones_like(sv) if signs is None else np.asarray(signs, dtype=np.float64).reshape(-1)
    return (sv.size - sv.sum()) * np.asarray(A_base, dtype=np.float64) + a_k @ (d * sv)


def unsquashed_advantages(A_base: Any, A_k: Any, lmbda: Any, signs: Any = None) -> np.ndarray:
    """Unsquashed mix A = A_base + sum_i d_i lambda_i A_i -> [N] (lambda >= 0 for inequalities, by projection)."""
    lv = np.asarray(lmbda, dtype=np.float64).reshape(-1)
    d = np.ones_like(lv) if signs is None else np.asarray(signs, dtype=np.float64).reshape(-1)
    return np.asarray(A_base, dtype=np.float64) + np.asarray(A_k, dtype=np.float64) @ (d * lv)


def safe_rlhf_advantages(A_base: Any, A_k: Any, lmbda: Any, signs: Any = None) -> np.ndarray:
    """safe-rlhf PPO-Lag mix A = (A_base + sum_i d_i lambda_i A_i) / (1 + sum_i lambda_i) -> [N].

    With one upper-bounded cost (d = -1) this is safe-rlhf's (A_r - lambda * A_c) / (1 + lambda); several
    constraints share the denominator (our generalisation).
    """
    lv = np.asarray(lmbda, dtype=np.float64).reshape(-1)
    return unsquashed_advantages(A_base, A_k, lv, signs) / (1.0 + lv.sum())


@dataclass(frozen=True)
class Constraint:
    """One constrained objective: its index in R[N, K], its threshold theta, and which side is allowed."""

    objective: int
    threshold: float
    direction: Direction = "lower"


_FORM_DEFAULTS: dict[str, tuple[Parametrization, float, float | None, float | None]] = {
    # form: (parametrization, momentum, initial multiplier value (None: drawn from N(0, INIT_STD)), gradient clip)
    "moskovitz": ("squashed", 0.1, None, 0.5),  # authors: lambda ~ N(0, 0.01), SGD momentum 0.1, clip 0.5
    "unsquashed": ("identity", 0.1, 0.5, 0.5),  # authors' code starts the unsquashed lambda at 0.5
    "safe_rlhf": ("log", 0.0, 1.0, None),  # safe-rlhf: lambda_init 1.0, plain SGD on log lambda, no clip
}
INIT_STD = 0.01
_DEFAULT: Any = object()  # "not given": the form's default (None is a value: no clip)


def initial_multipliers(count: int, seed: int) -> np.ndarray:
    """The authors' squashed start [count]: ONE draw lambda_0 ~ N(0, 0.01) shared by every constraint (their code
    draws a single number and repeats it), from a generator seeded by `seed`."""
    return np.full(count, float(np.random.default_rng(seed).normal(0.0, INIT_STD)))


def minibatch_means(columns: np.ndarray, minibatches: int, epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-minibatch NaN-aware means of the constrained columns [N, C], in the order the multiplier sees them.

    The authors take one multiplier step per PPO minibatch: ``epochs`` passes over the rollout, each a fresh
    random permutation cut into minibatches. Here each pass cuts a permutation of the N rows into
    min(minibatches, N) near-equal chunks (np.array_split); with one minibatch the rows keep their order.
    Returns epochs * chunks vectors [C] (NaN where a chunk has no value for a constraint).
    """
    n = columns.shape[0]
    chunks = max(1, min(minibatches, n))
    means: list[np.ndarray] = []
    for _ in range(epochs):
        order = rng.permutation(n) if chunks > 1 else np.arange(n)
        for rows in np.array_split(order, chunks):
            means.append(nanmean_columns(columns[rows]))
    return means


class LagrangianWeighting:
    """Constrained RLHF: constraint thresholds with Lagrange multipliers as weights (Moskovitz et al., ICLR 2024).

    Per objective, advantages A_k come from normalising that objective alone (the composer's normalisation:
    group / batch / none; "decoupled" = GDPO: per-objective group z-score, weighted sum, batch normalisation).
    They are mixed (``form``):

    * "moskovitz" (default): A = (C - sum_i s_i) A_base + sum_i d_i s_i A_i, s = sigmoid (inequality) or tanh
      (equality) of lambda, C the number of constraints.
    * "unsquashed": A = A_base + sum_i d_i lambda_i A_i, lambda >= 0 by projection for inequalities.
    * "safe_rlhf": A = (A_base + sum_i d_i lambda_i A_i) / (1 + sum_i lambda_i), lambda = exp(log lambda)
      (inequalities only).

    A_base = sum of the advantages of the ``base`` objectives: None = KL-only (A_base = 0; the KL is the
    learner's beta term, which the mix does not scale, unlike the authors' KL-reward advantage), one index
    (maximise a task reward s.t. constraints), or several (e.g. every constrained objective, with "upper"
    constraints: maximise the sum of rewards s.t. upper bounds). d_i = +1 for "lower"/"equal", -1 for "upper".

    ``weights()`` reports the effective coefficient of each objective's advantage, so that A = sum_k w_k A_k
    exactly (base factor on the base objectives plus d_i s_i on constrained ones; 0 for objectives in
    neither); `multipliers()` gives s (or lambda) per constraint and `metrics()` logs both.

    ``update(R)`` takes ``epochs`` x ``minibatches`` `multiplier_step`s, each with J_i = nanmean of the
    constrained column over one minibatch of the batch's rows (`minibatch_means`; the order is drawn from a
    generator seeded by (``seed``, update count), so a resumed run repeats it). The authors take one step per
    PPO minibatch, after that minibatch's policy step: 40 minibatches x 5 epochs = 200 per rollout in their
    dialog config. This learner takes one policy step per generation batch, so the default (1 x 1) keeps
    their one-multiplier-step-per-policy-step rule; ``minibatches``/``epochs`` give their per-rollout
    multiplier speed (configs/paper/lagrangian.yaml, docs/FIDELITY.md). The learner calls ``compose`` (mix
    with lambda_t) then ``update`` (lambda_{t+1}); J is detached from this step's rollouts, so it does not
    matter whether the optimiser step happens in between.

    Defaults per form (the authors' code): moskovitz starts every multiplier at one draw from N(0, 0.01)
    (seeded by ``seed``) and clips the multiplier gradient's norm at 0.5 (their policy max_grad_norm, reused
    for the multipliers); unsquashed starts at 0.5, clip 0.5; safe_rlhf starts at lambda 1, no clip. ``init``
    and ``max_grad_norm`` (null: no clip) override them.
    """

    name = "lagrangian"

    def __init__(
        self,
        num_objectives: int,
        constraints: Sequence[Constraint | tuple[int, float] | tuple[int, float, str]],
        base: int | Sequence[int] | None = None,
        form: LagrangianForm = "moskovitz",
        lr: float = 0.1,
        momentum: float | None = None,
        init: float | None = None,
        max_grad_norm: float | None = _DEFAULT,
        lambda_max: float | None = None,
        names: Sequence[str] | None = None,
        seed: int = 0,
        minibatches: int = 1,
        epochs: int = 1,
    ) -> None:
        if isinstance(num_objectives, bool) or not isinstance(num_objectives, int) or num_objectives < 1:
            raise RewardConfigError(f"weighting: num_objectives must be a positive integer, got {num_objectives!r}")
        self.num_objectives = num_objectives
        if form not in _FORM_DEFAULTS:
            raise RewardConfigError(f"weighting.form: {form!r} is not allowed; choose {', '.join(_FORM_DEFAULTS)}")
        self.form: LagrangianForm = form
        parsed: list[Constraint] = []
        for i, c in enumerate(constraints):
            c = c if isinstance(c, Constraint) else Constraint(*c)
            if (
                isinstance(c.objective, bool)
                or not isinstance(c.objective, int | np.integer)
                or not (0 <= c.objective < num_objectives)
            ):
                raise RewardConfigError(
                    f"weighting.constraints[{i}].objective: {c.objective!r} is not an objective index "
                    f"(0..{num_objectives - 1})"
                )
            if not (isinstance(c.threshold, int | float) and math.isfinite(c.threshold)):
                raise RewardConfigError(
                    f"weighting.constraints[{i}].threshold: must be a finite number, got {c.threshold!r}"
                )
            if c.direction not in _DIRECTIONS:
                raise RewardConfigError(
                    f"weighting.constraints[{i}].direction: {c.direction!r} is not allowed; choose "
                    f"{', '.join(_DIRECTIONS)}"
                )
            if form == "safe_rlhf" and c.direction == "equal":
                raise RewardConfigError(
                    f"weighting.constraints[{i}].direction: form safe_rlhf keeps lambda > 0 and cannot express "
                    f"an equality constraint; use form moskovitz or unsquashed"
                )
            parsed.append(Constraint(int(c.objective), float(c.threshold), c.direction))
        if not parsed:
            raise RewardConfigError("weighting.constraints: the Lagrangian strategy needs at least one constraint")
        self.constraints = parsed
        base_list = [] if base is None else [base] if isinstance(base, int | np.integer) else list(base)
        for b in base_list:
            if isinstance(b, bool) or not isinstance(b, int | np.integer) or not 0 <= b < num_objectives:
                raise RewardConfigError(f"weighting.base: {b!r} is not an objective index (0..{num_objectives - 1})")
        if len(set(base_list)) != len(base_list):
            raise RewardConfigError(f"weighting.base: repeated objectives {base_list}")
        self.base = [int(b) for b in base_list]
        if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
            raise RewardConfigError(f"weighting.lr: must be a number > 0, got {lr!r}")
        self.lr = float(lr)
        parametrization, default_momentum, default_init, default_clip = _FORM_DEFAULTS[form]
        self.parametrization: Parametrization = parametrization
        momentum = default_momentum if momentum is None else momentum
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise RewardConfigError(f"weighting.momentum: must be a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        if max_grad_norm is _DEFAULT:
            max_grad_norm = default_clip
        if max_grad_norm is not None and not (isinstance(max_grad_norm, int | float) and max_grad_norm > 0):
            raise RewardConfigError(f"weighting.max_grad_norm: must be a number > 0 or null, got {max_grad_norm!r}")
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        if lambda_max is not None:
            if form == "moskovitz":
                raise RewardConfigError(
                    "weighting.lambda_max: squashed multipliers are bounded already; "
                    "lambda_max applies to forms unsquashed and safe_rlhf"
                )
            if not (isinstance(lambda_max, int | float) and lambda_max > 0):
                raise RewardConfigError(f"weighting.lambda_max: must be a number > 0 or null, got {lambda_max!r}")
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RewardConfigError(f"weighting.seed: must be an integer, got {seed!r}")
        self.seed = seed
        for option, value in (("minibatches", minibatches), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RewardConfigError(f"weighting.{option}: must be an integer >= 1, got {value!r}")
        self.minibatches, self.epochs = minibatches, epochs
        n_c = len(parsed)
        init = default_init if init is None else init
        if init is None:
            start_values = initial_multipliers(n_c, seed)
        else:
            if not (isinstance(init, int | float) and math.isfinite(init)):
                raise RewardConfigError(f"weighting.init: must be a finite number, got {init!r}")
            if parametrization == "log" and init <= 0:
                raise RewardConfigError(f"weighting.init: safe_rlhf's lambda must start > 0, got {init!r}")
            if parametrization == "identity" and init < 0 and any(c.direction != "equal" for c in parsed):
                raise RewardConfigError(
                    f"weighting.init: unsquashed inequality multipliers must start >= 0, got {init}"
                )
            start_values = np.full(n_c, math.log(init) if parametrization == "log" else float(init))
        if names is not None and len(names) != num_objectives:
            raise RewardConfigError(f"weighting: {len(names)} names for {num_objectives} objectives")
        self.names = list(names) if names is not None else [str(k) for k in range(num_objectives)]
        self._param = start_values
        self._velocity = np.zeros(n_c)
        self._last_j = np.zeros(n_c)
        self._updates = 0
        self._idx = np.array([con.objective for con in parsed], dtype=np.intp)
        self._theta = np.array([con.threshold for con in parsed])
        self._dirs = [con.direction for con in parsed]
        self._signs = direction_signs(self._dirs, n_c)

    # -- multipliers -----------------------------------------------------------------------------------------
    def multipliers(self) -> np.ndarray:
        """The multipliers as they enter the mix [C]: s(lambda) (moskovitz) or lambda (unsquashed, safe_rlhf)."""
        return multiplier_values(self._param, self._dirs, self.parametrization)

    def base_factor(self) -> float:
        """The coefficient of A_base: C - sum s (moskovitz), 1 (unsquashed), 1 / (1 + sum lambda) (safe_rlhf)."""
        m = self.multipliers()
        if self.form == "moskovitz":
            return float(m.size - m.sum())
        if self.form == "unsquashed":
            return 1.0
        return float(1.0 / (1.0 + m.sum()))

    def weights(self) -> np.ndarray:
        m = self.multipliers()
        coef = self._signs * m
        if self.form == "safe_rlhf":
            coef = coef / (1.0 + m.sum())
        w = np.zeros(self.num_objectives)
        w[self.base] += self.base_factor()
        np.add.at(w, self._idx, coef)
        return w

    def combine(self, matrix: np.ndarray, group_size: int, normalization: str) -> tuple[np.ndarray, np.ndarray]:
        """Mixed advantages [N] from per-objective advantages, and composite rewards sum_k w_k R_k [N]."""
        w = self.weights()
        rewards = weighted_sum(matrix, w)
        if normalization == "decoupled":
            return rewards, decoupled_advantages(matrix, w, group_size)
        return rewards, objective_advantages(matrix, group_size, normalization) @ w

    def update(self, matrix: np.ndarray, **context: Any) -> None:
        matrix = np.asarray(matrix, dtype=np.float64)
        check_matrix(matrix, self.num_objectives)
        columns = matrix[:, self._idx]
        rng = np.random.default_rng([self.seed, self._updates])
        for j_minibatch in minibatch_means(columns, self.minibatches, self.epochs, rng):
            self._param, self._velocity = multiplier_step(
                self._param,
                j_minibatch,
                self._theta,
                self._dirs,
                lr=self.lr,
                momentum=self.momentum,
                velocity=self._velocity,
                parametrization=self.parametrization,
                max_grad_norm=self.max_grad_norm,
                max_value=self.lambda_max,
            )
        j = nanmean_columns(columns)
        self._last_j = np.where(np.isfinite(j), j, self._last_j)
        self._updates += 1

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"lagrange/base_factor": self.base_factor()}
        for i, (m, c) in enumerate(zip(self.multipliers(), self.constraints)):
            key = f"{self.names[c.objective]}" + (f"#{i}" if list(self._idx).count(c.objective) > 1 else "")
            out[f"lagrange/multiplier/{key}"] = float(m)
            if self._updates:  # d * (theta - J) of the last update: > 0 while an inequality is violated
                out[f"lagrange/violation/{key}"] = float(self._signs[i] * (self._theta[i] - self._last_j[i]))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "param": self._param.tolist(),
            "velocity": self._velocity.tolist(),
            "last_j": self._last_j.tolist(),
            "updates": self._updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("form") != self.form:
            raise RewardConfigError(f"saved Lagrangian state is for form {state.get('form')!r}, this is {self.form!r}")
        c = len(self.constraints)
        self._param = load_vector(state, "param", c)
        self._velocity = load_vector(state, "velocity", c)
        self._last_j = load_vector(state, "last_j", c)
        self._updates = int(state["updates"])
