"""Building reward components from names: registered built-ins or an explicit ``package.module:function``.

Reward code runs only from these two sources: a name in `COMPONENTS`, or an import path the recipe spells
out. Nothing in a recipe is ever passed to `eval`/`exec`. A component built with ``trust_remote_code: true``
(a reward model whose folder ships Python code) gets a warning that this code will run.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from rewards.base import RewardComponent
from rewards.errors import RewardConfigError


def _lazy(module: str, class_name: str) -> Callable[..., RewardComponent]:
    """A factory that imports `module` only when the component is built (R^3 loads sentence-transformers)."""

    def build(**kwargs: Any) -> RewardComponent:
        return getattr(importlib.import_module(module), class_name)(**kwargs)

    return build


COMPONENTS: dict[str, Callable[..., RewardComponent]] = {
    "r3": _lazy("rewards.r3.components", "R3Reward"),
    "r3.qr": _lazy("rewards.r3.components", "QueryRelevance"),
    "r3.rar": _lazy("rewards.r3.components", "ReferenceRelevance"),
    "r3.li": _lazy("rewards.r3.components", "LengthIncentive"),
    "r3.rp": _lazy("rewards.r3.components", "RepetitionPenalty"),
    "length": _lazy("rewards.rules", "LengthReward"),
    "format": _lazy("rewards.rules", "FormatReward"),
    "exact_match": _lazy("rewards.rules", "ExactMatchReward"),
    "repetition": _lazy("rewards.rules", "RepetitionReward"),
    "reward_model": _lazy("rewards.reward_model", "RewardModelComponent"),
}

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class FunctionComponent:
    """Wraps a TRL-style reward function ``f(prompts, completions, **kwargs) -> list[float]`` as a component."""

    def __init__(self, name: str, function: Callable[..., Sequence[float | None]], kwargs: dict[str, Any]) -> None:
        self.name = name
        self.function = function
        self.kwargs = kwargs

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        return list(self.function(prompts=prompts, completions=completions, **columns, **self.kwargs))


def _import_function(path: str, where: str) -> Callable[..., Any]:
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardConfigError(f"{where}: cannot import module {module_name!r} ({err})") from None
    function = getattr(module, attr, None)
    if function is None or not callable(function):
        raise RewardConfigError(f"{where}: {module_name!r} has no callable {attr!r}")
    return function


def build_component(name: str, spec: str, args: dict[str, Any] | None = None, where: str = "") -> RewardComponent:
    """Build the component `spec` (a registered name or ``module:function``) named `name`, with `args`.

    Raises RewardConfigError naming `where` for an unknown name, an import failure or bad arguments.
    """
    args = dict(args or {})
    where = where or f"objective {name!r}"
    if args.get("trust_remote_code") is True:
        warnings.warn(
            f"{where}: trust_remote_code is on: Python code shipped in the component's model folder will run",
            stacklevel=2,
        )
    if spec in COMPONENTS:
        factory = COMPONENTS[spec]
        try:
            component = factory(**args)
        except TypeError as err:
            raise RewardConfigError(f"{where}: bad arguments for {spec!r}: {err}") from None
        except RewardConfigError as err:
            raise RewardConfigError(f"{where}: {err}") from None
        component.name = name
        return component
    if _IMPORT_PATH.match(spec):
        function = _import_function(spec, where)
        if inspect.isclass(function):
            try:
                component = function(**args)
            except TypeError as err:
                raise RewardConfigError(f"{where}: bad arguments for {spec!r}: {err}") from None
            component.name = name
            return component
        return FunctionComponent(name, function, args)
    raise RewardConfigError(
        f"{where}: unknown reward component {spec!r}; use one of {', '.join(sorted(COMPONENTS))} "
        "or an import path package.module:function"
    )
