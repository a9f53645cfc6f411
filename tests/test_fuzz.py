"""Property/fuzz tests (hypothesis) over recipes, `--set` overrides and dataset rows: zero tracebacks.

Every generated case goes through the real loaders: `load_recipe` on a written YAML file (then the reward
composer is built from it), `load_prompts` and the preference-row reader on written JSONL/JSON/Parquet files,
and, for a subset, the CLI's `main()` up to the point where the model would be loaded. The property: the input
is either accepted, or rejected with a `UserInputError` whose message is one line naming the field (recipes)
or the file and row (datasets). Any other exception is a bug. Cases are derandomised (the same on every run);
how many ran is recorded for RELIABILITY.md.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from fault_components import record_result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignment.cli import main
from alignment.errors import ConfigError, DataError, UserInputError
from alignment.learners import iterative as iterative_module
from alignment.learners import trainer_setup
from alignment.learners.factory import build_composer
from alignment.learners.trainer_args import zero_stage
from alignment.recipes.deepspeed_config import ALLOWED_SECTIONS
from alignment.recipes.prompt_data import load_prompts
from alignment.recipes.recipe import Recipe, load_recipe

# FUZZ_SCALE=N runs N times the examples with fresh random cases (a deeper hunt than CI's fixed ones).
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    derandomize=SCALE == 1,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
HUGE = "x" * 200_000

# -- value generators -------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "nan", "1e-3", "true", HUGE, "../../etc/passwd", "builtin:nope", "os:system"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3)
    ),
    max_leaves=6,
)

# -- recipes ----------------------------------------------------------------------------------------------------

COMPONENTS = ["length", "format", "exact_match", "repetition", "lenght", "fault_components:flaky", "no.such:mod", ""]
# `module:attr` that is not reward code (issue 11.1): processes, threads, shell and file functions, builtins, a
# plain class, a callable object, a partial, a function without TRL's signature. Each writes SENTINEL if called.
NOT_REWARD_CODE = [
    "subprocess:Popen",
    "multiprocessing:Process",
    "threading:Thread",
    "os:system",
    "shutil:rmtree",
    "builtins:exec",
    "builtins:open",
    "collections:OrderedDict",
    "pathlib:Path",
    "torch.multiprocessing:Process",
    "torch:load",
    "untrusted_components:NotAComponent",
    "untrusted_components:callable_object",
    "untrusted_components:partial_reward",
    "untrusted_components:no_reward_signature",
    "untrusted_components:AbstractComponent",
    "untrusted_components:__class__",
]
NOT_REWARD_CODE_REFUSAL = (
    r"standard-library module|does not subclass rewards.base.RewardComponentBase|is abstract|not a Python function"
    r"|does not have TRL's reward signature|is a special name"
)
SENTINEL_ARGS = [
    {"args": ["touch", "SENTINEL"]},
    {"command": "touch SENTINEL"},
    {"sentinel": "SENTINEL"},
    {"path": "SENTINEL", "sentinel": "SENTINEL"},
    {"file": "SENTINEL", "mode": "w"},
    {"f": "SENTINEL"},
    {},
]


def base_recipe(data_file: Path) -> dict[str, Any]:
    """A valid recipe (tiny policy, a written prompt file, rule rewards) for the mutations to start from."""
    return {
        "algorithm": "grpo",
        "seed": 3,
        "model": {"path": "builtin:tiny-policy", "dtype": "float32", "trust_remote_code": False},
        "peft": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "data": {"train": str(data_file), "prompt_column": "prompt", "max_rows": 10},
        "rollout": {
            "engine": "transformers",
            "temperature": 1.0,
            "top_p": 1.0,
            "max_new_tokens": 8,
            "stop": ["\n\n"],
            "vllm_options": {"enforce_eager": True, "swap_space": 4, "max_num_seqs": 8},
        },
        "rewards": {
            "normalization": "group",
            "timeout": 30,
            "weighting": {"strategy": "static", "options": {}},
            "objectives": [
                {"name": "length", "component": "length", "weight": 1.0, "args": {"unit": "words", "target": 4}},
                {"name": "format", "component": "format", "weight": 0.5, "args": {"pattern": "^A"}, "timeout": 5},
            ],
        },
        "train": {
            "max_steps": 2,
            "prompts_per_step": 2,
            "num_generations": 2,
            "learning_rate": 1e-3,
            "torch_threads": 1,
            "report_to": ["none"],
        },
    }


PATH_FIELDS = [("model", "path"), ("data", "train"), ("data", "eval"), ("train", "deepspeed")]


def _numeric_fields(cls: Any = Recipe, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every int/float field of the recipe's dataclasses (optional ones too) as a key path; a list of dataclasses
    (objectives) through its first item."""
    import dataclasses
    import typing

    found = []
    for name, hint in typing.get_type_hints(cls).items():
        kinds = [hint, *typing.get_args(hint)]
        nested = next((k for k in kinds if dataclasses.is_dataclass(k)), None)
        if nested is not None:
            in_list = typing.get_origin(hint) is list
            found += _numeric_fields(nested, (*prefix, name, 0) if in_list else (*prefix, name))
        elif any(k in (int, float) for k in kinds):
            found.append((*prefix, name))
    return found


NUMERIC_FIELDS = _numeric_fields()
EDGE_NUMBERS = [-1, 0, 1, 2, 2**31, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324]
EDGE_NUMBERS += [0.5, -0.5, -0.0, 1.5, 255, 256, 4096, 604801, 1e12]
STRING_LISTS = [
    ("rollout", "stop"),
    ("peft", "target_modules"),
    ("preference", "activation_hooks"),
    ("train", "report_to"),
]
BAD_PATHS = ["x" * 300, "a/" * 3000, HUGE, "\x00", "nul\x00byte", "~nobody/x", "/", "/dev/null", "builtin:"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a nested mapping/list (for choosing what to mutate)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            found += _paths(child, (*prefix, i))
    return found


def _mutate(data: dict[str, Any], draw: Any, most: int = 4, least: int = 1) -> list[str]:
    """Apply `least`..`most` random mutations in place (delete, retype, add an unknown key, swap a component);
    return what was done."""
    done = []
    for _ in range(draw(st.integers(least, most))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        op = draw(st.sampled_from(["delete", "retype", "retype", "extra", "component", "path", "range", "empty"]))
        if op == "delete":
            del parent[last]
        elif op == "retype":
            parent[last] = draw(values)
        elif op == "extra" and isinstance(parent, dict):
            parent[draw(st.one_of(st.text(min_size=1, max_size=8), st.integers()))] = draw(values)
        elif op == "component" and isinstance(parent, dict):
            objectives = data.get("rewards", {}).get("objectives") if isinstance(data.get("rewards"), dict) else None
            if isinstance(objectives, list) and objectives and draw(st.integers(0, 3)):  # mostly a real objective
                parent = objectives[draw(st.integers(0, len(objectives) - 1))]
                path = ("rewards", "objectives", "component")
            if isinstance(parent, dict):
                parent["component"] = draw(st.sampled_from(COMPONENTS + NOT_REWARD_CODE))
                if draw(st.booleans()):
                    parent["args"] = copy.deepcopy(draw(st.sampled_from(SENTINEL_ARGS)))  # later mutations edit it
        elif op == "range":  # a numeric field anywhere in the recipe set to an edge value
            path = draw(st.sampled_from(NUMERIC_FIELDS))
            node: Any = data
            for key in path[:-1]:
                if isinstance(key, int):  # the first objective (or gold objective), made when missing
                    if isinstance(node, list) and not node:
                        node.append({"name": "g", "component": "length"})
                    node = node[0] if isinstance(node, list) else {}
                else:
                    node = (
                        node.setdefault(key, [] if key in ("objectives", "gold") else {})
                        if isinstance(node, dict)
                        else {}
                    )
            if isinstance(node, dict):
                node[path[-1]] = draw(st.sampled_from(EDGE_NUMBERS))
        elif op == "empty":  # an empty string in a string list, or as any string field
            section, key = draw(st.sampled_from(STRING_LISTS))
            if isinstance(data.get(section), dict) and draw(st.booleans()):
                data[section][key] = [*draw(st.sampled_from([[], ["x_proj"], ["tensorboard"]])), ""]
                path = (section, key)
            elif isinstance(parent, dict):
                parent[last] = ""
        elif op == "path":
            section, key = draw(st.sampled_from(PATH_FIELDS))
            if isinstance(data.get(section), dict):
                data[section][key] = draw(st.sampled_from(BAD_PATHS))
                path = (section, key)
        done.append(f"{op} {'.'.join(map(str, path))}")
    return done


def _overrides(draw: Any) -> list[str]:
    keys = st.sampled_from(
        ["train.max_steps", "rewards.objectives.0.weight", "rewards.objectives.5.weight", "rewards.timeout", "a..b"]
        + ["model", "train.torch_threads", "rollout.top_k", "rewards.objectives.0.timeout", "", "x.y.z"]
    )
    raw = st.one_of(st.text(max_size=10), st.sampled_from(["0", "-1", ".nan", "[1, 2]", "{a: 1}", "!!python/none"]))
    pairs = draw(st.lists(st.tuples(keys, raw), max_size=2))
    # One override in 8 lacks its '=' (a typo the CLI must name); the rest reach the recipe.
    return [f"{k}={v}" if draw(st.integers(0, 7)) else f"{k}{v}" for k, v in pairs]


SECTIONS = {f for f in Recipe.__dataclass_fields__} | {"config"}
# "<where>: ..." with where a dotted field path (list items as [i], an objective's name in parentheses), or
# the recipe file, or the --set option.
RECIPE_MESSAGE = re.compile(r"^(recipe '|--set |(?P<where>(?:'[^']*'|\"[^\"]*\"|[^\s:'\"])+)(?: \([^)]*\))?: )")


def _assert_names_the_field(message: str) -> None:
    assert message and "\n" not in message, repr(message)
    match = RECIPE_MESSAGE.match(message)
    assert match, f"message does not start with a field, the recipe or --set: {message[:300]!r}"
    where = match.group("where")
    if where is not None and "unknown field" not in message:
        head = re.split(r"[.\[]", where, maxsplit=1)[0]
        assert head in SECTIONS, f"{head!r} is not a recipe section: {message[:300]!r}"


def _write_recipe(folder: Path, text: bytes) -> Path:
    path = folder / "recipe.yaml"
    path.write_bytes(text)
    return path


@st.composite
def recipe_cases(draw: Any, least: int = 1) -> tuple[str, Any, list[str], list[str]]:
    """(kind, recipe mapping or raw bytes, overrides, mutation descriptions); `least` mutations at least."""
    kind = draw(
        st.sampled_from(
            ["mutated"] * 6
            + ["yaml_attack"] * 2
            + ["not_reward_code"] * 2
            + ["raw_text", "raw_bytes", "not_mapping", "bad_utf8", "python_tag"]
        )
    )
    if kind == "not_reward_code":  # an objective (either) names something that is not reward code
        data = base_recipe(Path("DATA"))
        objective = data["rewards"]["objectives"][draw(st.integers(0, 1))]
        objective["component"] = draw(st.sampled_from(NOT_REWARD_CODE))
        objective["args"] = copy.deepcopy(draw(st.sampled_from(SENTINEL_ARGS)))
        return kind, data, [], [f"component {objective['component']}"]
    if kind == "mutated":
        data = base_recipe(Path("DATA"))
        mutations = _mutate(data, draw, most=4 if least else 2, least=least)
        return kind, data, _overrides(draw) if mutations else [], mutations
    if kind == "yaml_attack":
        data = base_recipe(Path("DATA"))
        mutations = _mutate(data, draw, most=2, least=0)
        attack, text = _yaml_attack(data, draw)
        return f"attack:{attack}", text.encode("utf-8", "surrogatepass"), [], [*mutations, attack]
    if kind == "raw_text":
        return kind, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass"), [], []
    if kind == "raw_bytes":
        return kind, draw(st.binary(max_size=200)), [], []
    if kind == "not_mapping":
        return kind, yaml.safe_dump(draw(values), allow_unicode=True).encode("utf-8", "surrogatepass"), [], []
    if kind == "bad_utf8":
        return kind, b"train:\n  max_steps: 3\nseed: \xff\xfe\xc3(\n", [], []
    return kind, b"seed: !!python/object/apply:os.system ['echo pwned > PWNED']\n", [], []


# An alias bomb: 10^6 values once expanded, from about 200 characters.
BOMB = (
    "{"
    + ", ".join(
        [f"l0: &b0 [{', '.join(['x'] * 10)}]"]
        + [f"l{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]" for i in range(1, 6)]
    )
    + "}"
)
ATTACKS = {  # name -> the reason the loader gives
    "bomb": "once aliases are expanded",
    "deep": "nested deeper than",
    "loop": "refers to itself",
    "duplicate": "duplicate key",
    "huge": "larger than",
}


def _flow(node: Any, path: tuple[Any, ...], target: tuple[Any, ...], payload: str, duplicate: bool) -> str:
    """`node` as YAML flow text (JSON-style scalars); at `target` the value is `payload`, or with `duplicate`
    that mapping repeats its first key."""
    if path == target and not duplicate:
        return payload
    if isinstance(node, dict):
        items = [f"{_scalar(k)}: {_flow(v, (*path, k), target, payload, duplicate)}" for k, v in node.items()]
        if path == target and node:
            first = next(iter(node))
            items.append(f"{_scalar(first)}: {_flow(node[first], (*path, first), (), payload, False)}")
        return "{" + ", ".join(items) + "}"
    if isinstance(node, list):
        return "[" + ", ".join(_flow(v, (*path, i), target, payload, duplicate) for i, v in enumerate(node)) + "]"
    return _scalar(node)


def _scalar(value: Any) -> str:
    """One scalar as YAML flow text (lone surrogates, which no YAML file can hold, become '?')."""
    if isinstance(value, str):
        value = value.encode("utf-8", "replace").decode("utf-8")
    style = '"' if isinstance(value, str) else None
    text = yaml.safe_dump(value, default_flow_style=True, default_style=style, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _yaml_attack(data: dict[str, Any], draw: Any) -> tuple[str, str]:
    """The recipe as YAML text with one attack placed at a random spot: an alias bomb, deep nesting, a recursive
    alias, a key repeated in one mapping (any depth), or an oversized document."""
    attack = draw(st.sampled_from(sorted(ATTACKS)))
    paths = _paths(data)
    if attack == "duplicate":
        mappings = [()] + [p for p in paths if isinstance(_at(data, p), dict) and _at(data, p)]
        return attack, _flow(data, (), draw(st.sampled_from(mappings)), "", True)
    target = draw(st.sampled_from(paths))
    depth = draw(st.sampled_from([33, 40, 200, 3000]))
    payload = {
        "bomb": BOMB,
        "deep": "[" * depth + "]" * depth,
        "loop": draw(st.sampled_from(["&loop [*loop]", "&loop {k: *loop}", "&loop [1, {k: [*loop]}]"])),
        "huge": json.dumps("x" * (1 << 20)),
    }[attack]
    return attack, _flow(data, (), target, payload, False)


def _at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def _dump(data: Any, data_file: Path) -> bytes:
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    return _fill(text, data_file).encode("utf-8", "surrogatepass")


def _recipe_bytes(kind: str, content: Any, data_file: Path) -> bytes:
    """The recipe file's bytes: a mapping dumped, an attack's text with its placeholders filled, or raw bytes."""
    if kind.startswith("attack:"):
        return _fill(content.decode("utf-8", "surrogatepass"), data_file).encode("utf-8", "surrogatepass")
    return content if isinstance(content, bytes) else _dump(content, data_file)


def _fill(text: str, data_file: Path) -> str:
    return text.replace("DATA", str(data_file)).replace("SENTINEL", os.environ.get("ALIGN_TEST_SENTINEL", "SENTINEL"))


def _check_accepted(recipe: Recipe, folder: Path) -> None:
    """What happens to an accepted recipe before training must not fail except with a ConfigError: the run's
    config.yaml written and read back (as `align evaluate` does), the sampling settings, TRL's arguments."""
    from alignment.learners.preflight import check_before_training
    from alignment.learners.trainer_args import grpo_args, preference_args
    from alignment.recipes.loader import load_dataclass
    from alignment.recipes.yaml_loading import load_yaml

    text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    again = load_yaml(text, "config.yaml")
    assert yaml.safe_dump(load_dataclass(Recipe, again, "").to_dict(), sort_keys=False) == text
    recipe.rollout.sampling_params(n=recipe.train.num_generations, seed=recipe.seed)
    check_before_training(recipe)
    if recipe.train.deepspeed is None:
        build = preference_args if recipe.algorithm in ("dpo", "rpo", "sparsepo") else grpo_args
        build(recipe, folder / "run", 1)


def test_fuzz_recipes_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_file = tmp_path / "prompts.jsonl"
    data_file.write_text(json.dumps({"prompt": "Question: why?\nAnswer:"}) + "\n", encoding="utf-8")
    sentinel = tmp_path / "not-reward-code-ran"
    monkeypatch.setenv("ALIGN_TEST_SENTINEL", str(sentinel))
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=500 * SCALE)
    @given(case=recipe_cases())
    def run(case: tuple[str, Any, list[str], list[str]]) -> None:
        kind, content, overrides, _ = case
        with tempfile.TemporaryDirectory() as folder:
            path = _write_recipe(Path(folder), _recipe_bytes(kind, content, data_file))
            counts["cases"] += 1
            counts[f"kind:{kind}"] += 1
            try:
                recipe = load_recipe(path, overrides)
                build_composer(recipe)
                _check_accepted(recipe, Path(folder))
                counts["accepted"] += 1
                assert not kind.startswith("attack:") and kind != "not_reward_code", f"{kind} was accepted"
            except UserInputError as err:
                assert isinstance(err, ConfigError), type(err)
                _assert_names_the_field(str(err))
                if kind.startswith("attack:"):
                    assert ATTACKS[kind[len("attack:") :]] in str(err), str(err)[:300]
                if kind == "not_reward_code":
                    assert re.search(NOT_REWARD_CODE_REFUSAL, str(err)), str(err)[:300]
                counts["rejected"] += 1
                counts[f"error: {_reason(str(err))}"] += 1
            assert not (Path(folder) / "PWNED").exists() and not Path("PWNED").exists()
            assert not sentinel.exists(), f"code that is not reward code ran: {sentinel.read_text()}"
            assert not multiprocessing.active_children()

    run()
    record_result("fuzz_recipes", dict(counts))
    assert counts["cases"] >= 400 and counts["accepted"] > 10 and counts["rejected"] > 100, counts
    assert sum(v for k, v in counts.items() if k.startswith("kind:attack:")) > 40, counts
    assert counts["kind:not_reward_code"] > 15, counts


# -- DeepSpeed JSON files named by train.deepspeed ----------------------------------------------------------------

DS_SECTIONS = sorted(ALLOWED_SECTIONS) + ["csv_monitor", "tensorboard", "wandb", "comet", "flops_profiler"]
DS_SECTIONS += ["autotuning", "nebula", "compile", "comms_logger", "compression_training", "zero_optimization "]
DS_KNOWN = [("zero_optimization", "stage"), ("fp16", "enabled"), ("bf16", "enabled"), ("optimizer", "type")]
DS_KNOWN += [("optimizer", "params"), ("scheduler", "type"), ("torch_autocast", "lower_precision_safe_modules")]


@st.composite
def deepspeed_files(draw: Any) -> tuple[str, bytes]:
    """(kind, bytes) of a DeepSpeed config: a valid one with 1-3 mutations (forbidden or unknown sections, wrong
    types, edge numbers, values that disagree with the recipe, code-importing settings), or broken JSON."""
    kind = draw(st.sampled_from(["mutated"] * 6 + ["truncated", "garbage", "not_object", "duplicate", "nan", "deep"]))
    config: dict[str, Any] = {
        "zero_optimization": {"stage": draw(st.sampled_from([0, 1, 2, 3]))},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }
    for _ in range(draw(st.integers(1 if kind == "mutated" else 0, 3))):
        op = draw(st.sampled_from(["section", "known", "number", "delete"]))
        if op == "section":
            config[draw(st.sampled_from(DS_SECTIONS))] = copy.deepcopy(
                draw(st.one_of(values, st.just({"enabled": True})))
            )
        elif op == "known":
            section, key = draw(st.sampled_from(DS_KNOWN))
            block = config.setdefault(section, {})
            if isinstance(block, dict):
                block[key] = draw(st.one_of(values, st.sampled_from(["subprocess.Popen", ["os.system"], "AdamW"])))
        elif op == "number":
            key = draw(st.sampled_from(["train_batch_size", "train_micro_batch_size_per_gpu", "gradient_clipping"]))
            config[key] = draw(st.one_of(st.sampled_from([*EDGE_NUMBERS, 1, 4, "auto", "8"]), values))
        elif config:
            del config[draw(st.sampled_from(sorted(config)))]
    try:
        text = json.dumps(config, allow_nan=True)
    except (TypeError, ValueError):
        text = json.dumps(str(config))
    if kind == "truncated":
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    elif kind == "garbage":
        return kind, draw(st.binary(max_size=64))
    elif kind == "not_object":
        text = json.dumps(draw(st.one_of(st.lists(scalars, max_size=3), st.text(max_size=8))), allow_nan=True)
    elif kind == "duplicate":
        text = '{"zero_optimization": {"stage": 2}, "zero_optimization": {"stage": 3}}'
    elif kind == "nan":
        text = '{"gradient_clipping": NaN}'
    elif kind == "deep":
        depth = draw(st.sampled_from([50, 5000, 100000]))
        text = '{"aio": ' + "[" * depth + "]" * depth + "}"
    return kind, text.encode("utf-8", "surrogatepass")


def test_fuzz_deepspeed_json(tmp_path: Path) -> None:
    """Issue 11.7: a malformed or unsafe train.deepspeed file is refused with one line when the recipe loads."""
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "Q?"}) + "\n", encoding="utf-8")
    recipe = _write_recipe(tmp_path, _dump(base_recipe(Path("DATA")), tmp_path / "prompts.jsonl"))
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=150 * SCALE)
    @given(case=deepspeed_files())
    def run(case: tuple[str, bytes]) -> None:
        kind, content = case
        path = tmp_path / "ds.json"
        path.write_bytes(content)
        counts["cases"] += 1
        counts[f"kind:{kind}"] += 1
        try:
            loaded = load_recipe(recipe, [f"train.deepspeed={path}"])
        except UserInputError as err:
            assert isinstance(err, ConfigError), type(err)
            assert str(err).startswith("train.deepspeed: ") and "\n" not in str(err), str(err)[:300]
            counts["rejected"] += 1
            counts[f"error: {_reason(str(err))}"] += 1
            return
        config = json.loads(content)
        assert set(config) <= ALLOWED_SECTIONS and "lower_precision_safe_modules" not in config.get(
            "torch_autocast", {}
        )
        assert zero_stage(loaded.train.deepspeed) in (0, 1, 2, 3)
        assert kind == "mutated", kind
        counts["accepted"] += 1

    run()
    record_result("fuzz_deepspeed_json", dict(counts))
    assert counts["cases"] >= 100 and counts["accepted"] > 5 and counts["rejected"] > 50, counts


# -- dataset rows -----------------------------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "   ", HUGE, "Question: what?\nAnswer:", "\ud800 lone surrogate"])
)
messages = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": texts}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "robot", "", 3]), "content": values}),
    st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(values, max_size=2)}),
    st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.just([{"type": "text", "text": "hello"}, {"type": "image"}])}
    ),
    st.dictionaries(st.sampled_from(["role", "content", "name"]), values, max_size=3),
    values,
)
fields = st.one_of(texts, st.lists(messages, max_size=3), values)


words = st.text(alphabet="abcdefgh xyz?", min_size=1, max_size=20).filter(lambda t: t.strip() != "")


@st.composite
def valid_row(draw: Any, preference: bool) -> dict[str, Any]:
    """A well-formed TRL row: standard strings or chat messages (preference rows: distinct answers)."""
    chat = draw(st.booleans())
    prompt = draw(words)
    row: dict[str, Any] = {"prompt": [{"role": "user", "content": prompt}] if chat else prompt}
    if preference:
        chosen, rejected = draw(words), draw(words)
        if chosen == rejected:
            rejected += " no"
        row["chosen"] = [{"role": "assistant", "content": chosen}] if chat else chosen
        row["rejected"] = [{"role": "assistant", "content": rejected}] if chat else rejected
    return row


@st.composite
def row_strategy(draw: Any, preference: bool) -> Any:
    """A valid row, then (60% of the time) 1-2 damaged fields: missing, mistyped, huge/empty, bad chat shape."""
    row = draw(valid_row(preference))
    if draw(st.integers(0, 9)) < 6:
        for _ in range(draw(st.integers(1, 2))):
            key = draw(st.sampled_from(sorted(row) + ["reference", "score", "x"]))
            op = draw(st.sampled_from(["delete", "field", "text", "extra"]))
            if op == "delete":
                row.pop(key, None)
            elif op == "field":
                row[key] = draw(fields)
            elif op == "text":
                row[key] = draw(texts)
            else:
                row[key] = draw(st.one_of(values, st.sampled_from([math.nan, math.inf, -math.inf])))
    return row if draw(st.integers(0, 29)) else draw(values)  # a few rows that are not objects at all


def _line(row: Any, draw: Any) -> bytes:
    try:
        text = json.dumps(row, allow_nan=True)
    except (TypeError, ValueError):  # non-string keys that JSON cannot hold
        text = json.dumps(str(row))
    data = text.encode("utf-8", "surrogatepass")
    damage = draw(st.integers(0, 59))
    if damage == 0:
        data = data[: max(1, len(data) // 2)]  # truncated line
    elif damage == 1:
        data = data[:1] + b"\xff\xfe" + data[1:]  # invalid UTF-8
    elif damage == 2:
        data = b""  # blank line
    return data + b"\n"


@st.composite
def dataset_files(draw: Any, preference: bool) -> tuple[str, bytes | list[dict[str, Any]]]:
    """(suffix, file content); Parquet files are written from rows (or are garbage bytes)."""
    suffix = draw(st.sampled_from([".jsonl"] * 8 + [".json", ".parquet", ".csv"]))
    rows = draw(st.lists(row_strategy(preference), max_size=5))
    if suffix == ".jsonl":
        return suffix, b"".join(_line(r, draw) for r in rows)
    if suffix == ".json":
        payload = rows if draw(st.booleans()) else draw(values)
        return suffix, json.dumps(payload, allow_nan=True).encode("utf-8", "surrogatepass")
    if suffix == ".parquet" and draw(st.booleans()):
        return suffix, [r for r in rows if isinstance(r, dict)]
    return suffix, draw(st.binary(max_size=64))


@st.composite
def valid_prompt_files(draw: Any) -> tuple[str, bytes]:
    """A .jsonl file of 1-4 well-formed prompt rows (so that CLI cases also get past the data checks)."""
    rows = draw(st.lists(valid_row(False), min_size=2, max_size=4))  # the base recipe takes 2 prompts per step
    return ".jsonl", b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in rows)


def _write_dataset(folder: Path, suffix: str, content: Any) -> Path:
    path = folder / f"rows{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
        return path
    from datasets import Dataset

    try:
        Dataset.from_list(content).to_parquet(str(path))
    except Exception:  # noqa: BLE001 - pyarrow cannot hold these rows: write garbage instead
        path.write_bytes(b"PAR1 not really")
    return path


def _assert_names_the_row(message: str, path: Path) -> None:
    assert message and "\n" not in message, repr(message)
    assert message.startswith(str(path)), f"message does not name the file: {message[:300]!r}"
    assert len(message) < 2000, f"message too long: {message[:300]!r}..."


def _preference_reader() -> Any:
    try:
        from alignment.recipes.preference_data import read_preference_rows
    except ImportError:  # pragma: no cover - before the preference learners land
        from alignment.reports.reward_eval import load_preference_pairs

        return load_preference_pairs
    return lambda path: read_preference_rows(path, on_bad="error")


@pytest.mark.parametrize("preference", [False, True], ids=["prompts", "preference_pairs"])
def test_fuzz_dataset_rows(preference: bool) -> None:
    counts: Counter[str] = Counter()
    reader = _preference_reader() if preference else load_prompts

    @settings(FUZZ, max_examples=250 * SCALE)
    @given(case=dataset_files(preference))
    def run(case: tuple[str, Any]) -> None:
        suffix, content = case
        with tempfile.TemporaryDirectory() as folder:
            path = _write_dataset(Path(folder), suffix, content)
            counts["cases"] += 1
            try:
                reader(path)
                counts["accepted"] += 1
            except UserInputError as err:
                assert isinstance(err, DataError), type(err)
                _assert_names_the_row(str(err), path)
                counts["rejected"] += 1
                counts[f"error: {_reason(str(err)[len(str(path)) :])}"] += 1

    run()
    record_result("fuzz_preference_rows" if preference else "fuzz_prompt_rows", dict(counts))
    assert counts["cases"] >= 200 and counts["accepted"] > 5 and counts["rejected"] > 50, counts


# -- the CLI, up to loading the model ---------------------------------------------------------------------------


def _reason(message: str) -> str:
    """A message reduced to its kind, for counting: paths and numbers dropped, the first few words kept."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"|/\S+|\d+", "_", message.split("error: ", 1)[-1])
    return " ".join(text.split()[:6])


class ReachedModelLoading(Exception):
    """Raised by the stubbed model loader: every check before it accepted the input."""


def test_fuzz_cli_until_model_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutated recipes with fuzzed prompt files through `align train`: exit 2 with one line, or reach the model."""

    def stub(recipe: Any) -> Any:
        raise ReachedModelLoading

    for module in (trainer_setup, iterative_module):  # every place a training run loads its model
        monkeypatch.setattr(module, "load_model_and_tokenizer", stub)
    threads = torch.get_num_threads()
    counts: Counter[str] = Counter()

    @settings(FUZZ, max_examples=60 * SCALE)
    @given(case=recipe_cases(least=0), data=st.one_of(valid_prompt_files(), dataset_files(False)))
    def run(case: tuple[str, Any, list[str], list[str]], data: tuple[str, Any]) -> None:
        import contextlib
        import io

        kind, content, overrides, _ = case
        with tempfile.TemporaryDirectory() as folder:
            data_file = _write_dataset(Path(folder), *data)
            recipe = _write_recipe(Path(folder), _recipe_bytes(kind, content, data_file))
            argv = ["train", str(recipe), "--output-dir", str(Path(folder) / "run")]
            for override in overrides:
                argv += ["--set", override]
            counts["cases"] += 1
            stderr = io.StringIO()
            try:
                with contextlib.redirect_stderr(stderr):
                    code = main(argv)
            except ReachedModelLoading:
                counts["reached_model"] += 1
                return
            finally:
                torch.set_num_threads(threads)
            assert code == 2, (code, stderr.getvalue()[-2000:])
            lines = stderr.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("align train: error: "), stderr.getvalue()[-2000:]
            counts["exit_2"] += 1
            counts[f"error: {_reason(lines[0])}"] += 1

    run()
    record_result("fuzz_cli", dict(counts))
    assert counts["cases"] >= 50 and counts["exit_2"] > 20, counts
