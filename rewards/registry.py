"""Building reward components from names: registered built-ins or an explicit ``package.module:attr``.

Reward code runs only from these two sources: a name in `COMPONENTS`, or an import path the recipe spells
out, which must name a plain Python function with TRL's reward signature ``f(prompts, completions, **columns)``
or a concrete subclass of `rewards.base.RewardComponentBase`, in a module outside the standard library. Anything
else (a built-in, a standard-library or other class, a callable object) is refused before it is called. Nothing
in a recipe is ever passed to `eval`/`exec`. A component built with ``trust_remote_code: true``
(a reward model whose folder ships Python code) gets a warning that this code will run.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from rewards.base import RewardComponent, RewardComponentBase
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

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_BUILD_ERRORS = (TypeError, ValueError, OSError, AttributeError)  # a built-in component's bad arguments or files


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


def _unknown(spec: str, where: str) -> RewardConfigError:
    return RewardConfigError(
        f"{where}: unknown reward component {spec!r}; use one of {', '.join(sorted(COMPONENTS))} "
        "or an import path package.module:function"
    )


def check_spec(spec: str, where: str = "") -> None:
    """Refuse, without importing anything, a spec that is neither a registered name nor ``package.module:attr``
    outside the standard library (whose functions and classes are never reward code). RewardConfigError."""
    if spec in COMPONENTS:
        return
    if not isinstance(spec, str) or not _IMPORT_PATH.match(spec):
        raise _unknown(spec, where)
    module_name, attr = spec.split(":", 1)
    top = module_name.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        raise RewardConfigError(
            f"{where}: {spec!r} names the standard-library module {top!r}; a module:attr component must be your own "
            "reward function or RewardComponentBase subclass (nothing was imported)"
        )
    if attr.startswith("__"):
        raise RewardConfigError(
            f"{where}: {spec!r}: {attr!r} is a special name, not reward code (nothing was imported)"
        )


def _import_reward_code(spec: str, where: str) -> Any:
    """The function or class `spec` names, checked before anything in it is called.

    Importing the module runs its top-level code (as any import does; reading the attribute may run the module's
    own `__getattr__`, as lazily-importing packages such as `trl.rewards` have); the attribute must be a plain
    Python function with TRL's reward signature or a concrete subclass of `RewardComponentBase`.
    """
    check_spec(spec, where)
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardConfigError(f"{where}: cannot import module {module_name!r} ({err})") from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing: one line, not a traceback
        detail = str(err).splitlines()[0] if str(err) else ""
        raise RewardConfigError(
            f"{where}: importing {module_name!r} raised {type(err).__name__}: {detail}".rstrip(": ")
        ) from None
    try:
        target = getattr(module, attr, None)
    except Exception as err:  # noqa: BLE001 - the module's own __getattr__ failed
        raise RewardConfigError(f"{where}: reading {spec!r} raised {_first_line(err)}") from None
    if target is None:
        raise RewardConfigError(f"{where}: {module_name!r} has no callable {attr!r}")
    if inspect.isfunction(target):
        _check_reward_signature(target, spec, where)
        return target
    if inspect.isclass(target):
        if RewardComponentBase not in inspect.getmro(target):
            raise RewardConfigError(
                f"{where}: {spec!r} is a class that does not subclass rewards.base.RewardComponentBase; only such "
                "classes (or functions f(prompts, completions, **columns)) are reward code (nothing was called)"
            )
        if inspect.isabstract(target):
            raise RewardConfigError(f"{where}: {spec!r} is abstract (it does not define __call__)")
        return target
    raise RewardConfigError(
        f"{where}: {spec!r} is a {type(target).__name__}, not a Python function f(prompts, completions, **columns) or "
        "a RewardComponentBase subclass (nothing was called)"
    )


def _check_reward_signature(function: Callable[..., Any], spec: str, where: str) -> None:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        parameters = {}
    named = {n for n, p in parameters.items() if p.kind in _NAMED}
    open_keywords = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if "completions" not in named or not ("prompts" in named or open_keywords):
        raise RewardConfigError(
            f"{where}: {spec!r} does not have TRL's reward signature f(prompts, completions, **columns) (it takes "
            f"{', '.join(parameters) or 'nothing'}); nothing was called"
        )


def build_component(name: str, spec: str, args: dict[str, Any] | None = None, where: str = "") -> RewardComponent:
    """Build the component `spec` (a registered name, or ``package.module:attr`` naming a reward function or a
    `RewardComponentBase` subclass) named `name`, with `args`.

    What runs: a registered component's constructor; for an import path, the import of its module, then (a class)
    its constructor with `args`, or (a function) nothing until it scores. Anything else is refused before it is
    called. Raises RewardConfigError naming `where` for an unknown name, an import failure or bad arguments.
    """
    args = dict(args or {})
    where = where or f"objective {name!r}"
    if args.get("trust_remote_code") is True:
        warnings.warn(
            f"{where}: trust_remote_code is on: Python code shipped in the component's model folder will run",
            stacklevel=2,
        )
    if spec in COMPONENTS:
        try:
            component = COMPONENTS[spec](**args)
        except RewardConfigError as err:
            raise RewardConfigError(f"{where}: {err}") from None
        except _BUILD_ERRORS as err:
            raise RewardConfigError(f"{where}: bad arguments for {spec!r}: {_first_line(err)}") from None
        component.name = name
        return component
    target = _import_reward_code(spec, where)
    if inspect.isfunction(target):
        try:
            inspect.signature(target).bind_partial(prompts=None, completions=None, **args)
        except TypeError as err:
            raise RewardConfigError(f"{where}: bad arguments for {spec!r}: {err}") from None
        return FunctionComponent(name, target, args)
    try:
        component = target(**args)
        component.name = name
    except RewardConfigError as err:
        raise RewardConfigError(f"{where}: {err}") from None
    except Exception as err:  # noqa: BLE001 - the user's constructor failed: one line naming the objective
        raise RewardConfigError(f"{where}: building {spec!r} raised {_first_line(err)}") from None
    return component


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
