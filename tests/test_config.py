"""Recipe loading: types, unknown fields, overrides and path resolution, each error naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.errors import ConfigError
from alignment.recipes.loader import apply_overrides, load_dataclass
from alignment.recipes.recipe import Recipe, load_recipe

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_quickstart_recipe_loads_and_resolves_builtins() -> None:
    recipe = load_recipe(REPO / "configs" / "quickstart.yaml")
    assert recipe.algorithm == "grpo"
    assert Path(recipe.model.path).is_dir()
    assert Path(recipe.data.train).is_file()
    assert [o.name for o in recipe.rewards.objectives] == ["relevance", "length"]
    assert recipe.train.learning_rate == pytest.approx(2e-3)


def test_overrides_reach_nested_fields_and_list_items() -> None:
    recipe = load_recipe(
        REPO / "configs" / "quickstart.yaml",
        ["train.max_steps=7", "rewards.objectives.1.weight=0.25", 'rollout.stop=["\\n\\n"]'],
    )
    assert recipe.train.max_steps == 7
    assert recipe.rewards.objectives[1].weight == 0.25
    assert recipe.rollout.stop == ["\n\n"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("algorithm: ppo\n", "algorithm: unknown algorithm 'ppo'; available: grpo"),
        ("train: {max_stepz: 3}\n", "train.max_stepz: unknown field"),
        ("train: {max_steps: many}\n", "train.max_steps: expected an integer, got 'many'"),
        ("train: {max_steps: 0}\n", "train.max_steps: must be a positive integer, got 0"),
        ("train: {learning_rate: fast}\n", "train.learning_rate: expected a number, got 'fast'"),
        ("rollout: {engine: tgi}\n", "rollout.engine: 'tgi' is not allowed; choose one of 'transformers', 'vllm'"),
        ("rewards: {objectives: [{component: length}]}\n", "rewards.objectives[0].name: required field is missing"),
        ("rewards: {objectives: []}\n", "rewards.objectives: needs at least one objective"),
        ("model: {path: /nonexistent/model}\n", "model.path: '/nonexistent/model' does not exist"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("train: {max_steps: [1\n", "not valid YAML (while parsing a flow sequence: did not find expected"),
        ("peft: {dropout: 1.5}\n", "peft.dropout: must be in [0, 1), got 1.5"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    base = "rewards: {objectives: [{name: l, component: length, args: {target: 5}}]}\n"
    body = text if text.startswith(("rewards", "-", "train: {max_steps: [")) else base + text
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, body))
    assert message in str(info.value)


def test_missing_recipe_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.max_steps"])
    with pytest.raises(ConfigError, match="must be an index below 1"):
        apply_overrides({"a": [1]}, ["a.3=2"])


def test_load_dataclass_fills_defaults() -> None:
    recipe = load_dataclass(Recipe, {"rewards": {"objectives": [{"name": "x", "component": "length"}]}}, "")
    assert recipe.train.num_generations == 8
    assert recipe.peft.target_modules == ["q_proj", "v_proj"]


# -- issue 11: YAML bombs, deep nesting and duplicate keys in every YAML the project reads ------------------------

# 10 + 100 + ... + 10^6 values once expanded from ~200 bytes: loads as a small graph of shared lists, but copying
# or writing it (the run's config.yaml) never finishes.
BOMB = (
    "{"
    + ", ".join(
        [f"l0: &b0 [{', '.join(['x'] * 10)}]"]
        + [f"l{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]" for i in range(1, 6)]
    )
    + "}"
)
DEEP = "[" * 3000 + "]" * 3000
MINIMAL = "rewards: {objectives: [{name: l, component: length, args: {target: 5}}]}\n"


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text, text
    return text


@pytest.mark.parametrize(
    "placement",
    [
        "rollout: {vllm_options: BOMB}\n" + MINIMAL,
        "rewards:\n  weighting: {strategy: static, options: {extra: BOMB}}\n  objectives: [{name: l, component: x}]\n",
        "rewards: {objectives: [{name: l, component: length, args: {target: 5, junk: BOMB}}]}\n",
        "rewards: {objectives: [{name: l, component: length, length_condition: BOMB}]}\n",
        "model: {path: builtin:tiny-policy, extra: BOMB}\n" + MINIMAL,
    ],
    ids=["vllm_options", "weighting.options", "objective.args", "length_condition", "unknown_key"],
)
def test_alias_bombs_are_refused_wherever_they_sit(tmp_path: Path, placement: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, placement.replace("BOMB", BOMB)))
    assert "more than 20000 values once aliases are expanded" in _one_line(info.value)
    assert str(info.value).startswith(f"recipe '{tmp_path / 'recipe.yaml'}': line ")


def test_every_yaml_reader_bounds_aliases_depth_and_duplicates(tmp_path: Path) -> None:
    """--set values, --reward YAML specs, --strategy-options and run folders' config.yaml use the same loader."""
    from alignment.learners.factory import composer_from_spec
    from alignment.reports.checkpoint_eval import recipe_from_run
    from alignment.reports.runs import SkipRun, load_run
    from alignment.reports.sweep import parse_strategy_options

    recipe = write(tmp_path, MINIMAL)
    for bad, reason in [(BOMB, "more than 20000 values"), (DEEP, "nest"), ("{a: 1, a: 2}", "duplicate key 'a'")]:
        with pytest.raises(ConfigError, match=f"^--set 'rollout.vllm_options=.*{reason}"):
            load_recipe(recipe, [f"rollout.vllm_options={bad}"])
        with pytest.raises(ConfigError, match=f"^--strategy-options gradient: .*{reason}"):
            parse_strategy_options([f"gradient={bad}"])
        spec = tmp_path / "rewards.yaml"
        spec.write_text(f"objectives: [{{name: l, component: length, args: {bad}}}]\n")
        with pytest.raises(ConfigError, match=f"^--reward {spec}: .*{reason}"):
            composer_from_spec(str(spec))
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "config.yaml").write_text(f"algorithm: grpo\nrollout: {{vllm_options: {bad}}}\n")
        with pytest.raises(ConfigError, match=f"^{run / 'config.yaml'}: .*{reason}"):
            recipe_from_run(run)
        (run / "eval").mkdir(exist_ok=True)
        (run / "eval" / "step-1.json").write_text("{}")
        with pytest.raises(SkipRun, match=f"^config.yaml: .*{reason}"):
            load_run(run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train: {max_steps: 3}\nseed: 1\ntrain: {learning_rate: 0.1}\n", "line 3: duplicate key 'train'"),
        ("train: {max_steps: 3, max_steps: 4}\n", "line 1: duplicate key 'max_steps'"),
        ("rewards:\n  objectives:\n  - {name: a, component: length, name: b}\n", "line 3: duplicate key 'name'"),
        ("rewards: {objectives: [{name: a, component: length, args: {unit: words, unit: chars}}]}\n", "key 'unit'"),
        ("k: &k seed\n*k : 1\nseed: 2\n", "line 3: duplicate key 'seed'"),
        ("train: &t {max_steps: *t}\n", "alias *t refers to itself (a loop)"),
        (f"rewards: {{objectives: [{{name: l, component: length, args: {{deep: {DEEP}}}}}]}}\n", "nest"),
        ("seed: " + "9" * 5000 + "\n", "a value cannot be read (Exceeds the limit (4300 digits)"),
        ("seed: 1\n" + "#" * (1 << 20), "larger than 1048576 bytes"),
    ],
    ids=["top", "nested", "list_item", "free_form", "alias_key", "loop", "deep", "huge_int", "huge_file"],
)
def test_duplicate_keys_loops_and_deep_nesting_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, text))
    assert message in _one_line(info.value)


def test_deep_set_paths_are_refused(tmp_path: Path) -> None:
    deep_key = "rewards.weighting.options." + ".".join(["a"] * 100)
    with pytest.raises(ConfigError, match="with its --set overrides: nested deeper than 32 levels"):
        load_recipe(write(tmp_path, MINIMAL), [f"{deep_key}=1"])


# -- issue 11: values accepted silently or crashing later -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('rollout.stop=["</s>", ""]', "rollout.stop[1]: must not be an empty string"),
        ('peft.target_modules=["q_proj", ""]', "peft.target_modules[1]: must not be an empty string"),
        ('preference.activation_hooks=[""]', "preference.activation_hooks[0]: must not be an empty string"),
        ("data.prompt_column=''", "data.prompt_column: must not be an empty string"),
        ("output_dir=''", "output_dir: must not be an empty string"),
        ("train.epsilon_high=-0.2", "train.epsilon_high: the upper clipping range must be > 0"),
        ("train.epsilon_high=0", "train.epsilon_high: the upper clipping range must be > 0"),
        ("train.warmup_steps=-1", "train.warmup_steps: must be >= 0, got -1"),
        ("seed=-1", "seed: must be in 0-4294967295"),
        ("seed=4294967296", "seed: must be in 0-4294967295"),
        ("seed=18446744073709551616", "seed: 18446744073709551616 is out of range (a 64-bit integer at most)"),
        ("train.max_steps=" + "9" * 30, "train.max_steps: 999999999999999999999999999999 is out of range"),
        ("train.learning_rate=" + "1" + "0" * 400, "train.learning_rate: 1000000"),
        ("rewards.timeout=1e12", "rewards.timeout: must be at most 604800 seconds (a week); null for no limit"),
        ("rewards.objectives.0.timeout=1e300", "rewards.objectives[0].timeout: must be at most 604800 seconds"),
        ("rollout.request_timeout_s=1e300", "rollout.request_timeout_s: must be at most 604800 seconds"),
        ("rollout.retries=1000000", "rollout.retries: must be at most 100"),
        ("rollout.retry_backoff_s=1e9", "rollout.retry_backoff_s: must be at most 3600 seconds"),
        ("rewards.objectives.0.component=os:system", "standard-library module 'os'"),
    ],
)
def test_out_of_range_and_empty_values_are_one_line(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, MINIMAL), [override])
    assert message in _one_line(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "=1",
        "train..x=1",
        ".=1",
        "train.=1",
        "rewards.objectives.-1.weight=1",
        "rewards.objectives.99999999999.weight=1",
        "seed.x=1",
        "rollout.stop.0=x",
        "rollout.stop=&a [*a]",
        "x=" + "y" * (1 << 20) + "z",
        "train.max_steps=!!binary AAAA",
    ],
)
def test_set_edge_cases_are_one_line(tmp_path: Path, override: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, MINIMAL), [override])
    text = _one_line(info.value)
    assert text.startswith(("--set ", "train.", "seed", "x:", "rollout.")) and len(text) < 1000, text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"zero_optimization": {"stage": 2}', "is not valid JSON (line 1: Expecting ',' delimiter)"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"zero_optimization": {"stage": 2}, "zero_optimization": {"stage": 3}}', "repeats the key"),
        ('{"zero_optimization": {"stage": 5}}', "zero_optimization.stage must be 0, 1, 2 or 3, got 5"),
        ('{"zero_optimization": "fast"}', "zero_optimization must be an object"),
        ('{"train_micro_batch_size_per_gpu": 0}', "train_micro_batch_size_per_gpu must be a positive integer"),
        ('{"gradient_clipping": NaN}', "is not valid JSON (NaN is not a JSON number)"),
        ('{"gradient_clipping": 1' + "0" * 400 + "}", "gradient_clipping must be a number >= 0"),
        ('{"gradient_accumulation_steps": 4}', "gradient_accumulation_steps = 4 disagrees with"),
        ('{"bf16": {"enabled": true}}', "bf16.enabled = True disagrees with model.dtype"),
        ('{"optimizer": {"type": "AdamW", "params": {"lr": 0.5}}}', "optimizer.params.lr = 0.5 disagrees"),
        ('{"optimizer": {"type": "os.system"}}', "optimizer.type must name a DeepSpeed optimizer"),
        ("[" * 100000 + "]" * 100000, "is not valid JSON"),
        ("\xff\xfe", "not UTF-8 text"),
    ],
)
def test_malformed_deepspeed_json_is_refused_when_the_recipe_loads(tmp_path: Path, content: str, message: str) -> None:
    """Issue 11.7: a malformed DeepSpeed JSON was found only ~145 s into each launched process."""
    path = tmp_path / "ds.json"
    path.write_bytes(content.encode("latin-1") if content == "\xff\xfe" else content.encode())
    with pytest.raises(ConfigError) as info:
        load_recipe(write(tmp_path, MINIMAL), [f"train.deepspeed={path}"])
    assert _one_line(info.value).startswith("train.deepspeed: ") and message in str(info.value)


def test_shipped_deepspeed_configs_pass_the_check(tmp_path: Path) -> None:
    for name in ("zero2.json", "zero3.json"):
        recipe = load_recipe(write(tmp_path, MINIMAL), [f"train.deepspeed={REPO / 'configs' / name}"])
        assert recipe.train.deepspeed == str(REPO / "configs" / name)


# -- issue 11: checks that need the machine, the model or the data: through `align train` -----------------------


def _train(tmp_path: Path, body: str, *overrides: str) -> tuple[int, str]:
    import contextlib
    import io

    from alignment.cli import main

    argv = ["train", str(write(tmp_path, body)), "--output-dir", str(tmp_path / "run")]
    for override in overrides:
        argv += ["--set", override]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    return code, stderr.getvalue()


def _prompts(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(f'{{"prompt": "Question {i}?"}}\n' for i in range(count)))
    return path


GRPO = "rewards: {{objectives: [{{name: l, component: length, args: {{target: 5}}}}]}}\ndata: {{train: {data}}}\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.prompts_per_step=8"], "train.prompts_per_step: 8 per step, but {data} has only 5 prompts"),
        (["train.prompts_per_step=4", "data.max_rows=3"], "has only 3 prompts (after data.max_rows)"),
        (["rollout.max_new_tokens=256"], "rollout.max_new_tokens: 256 new tokens leave no room for a prompt"),
        (["rollout.max_prompt_tokens=200", "rollout.max_new_tokens=64"], "rollout.max_prompt_tokens: 200 prompt + 64"),
        (["train.deepspeed=" + str(REPO / "configs" / "zero2.json")], "train.deepspeed: a DeepSpeed run must be"),
    ],
    ids=["prompts_per_step", "max_rows", "max_new_tokens", "max_prompt_tokens", "deepspeed_without_launcher"],
)
def test_train_refuses_before_anything_is_loaded_or_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], message: str
) -> None:
    """Issue 11.6/11.7: prompts_per_step above the data ran "0 steps" with exit 0; max_new_tokens past the tiny
    policy's 256-token context and train.deepspeed without its launcher gave tracebacks."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    data = _prompts(tmp_path, 5)
    code, err = _train(tmp_path, GRPO.format(data=data), "train.report_to=[none]", *overrides)
    last = err.splitlines()[-1]  # (after the model's loading bar, for the checks that need the model)
    assert code == 2 and err.endswith("\n") and last.startswith("align train: error: "), err
    assert message.format(data=data) in last
    assert not (tmp_path / "run").exists()
    if "deepspeed" in message:
        assert "deepspeed --num_gpus N --module alignment.cli train" in err


def test_report_to_a_backend_that_is_not_installed(tmp_path: Path) -> None:
    import importlib.util

    missing = [b for b in ("wandb", "trackio") if importlib.util.find_spec(b) is None]
    if not missing:
        pytest.skip("wandb and trackio are both installed here")
    code, err = _train(tmp_path, GRPO.format(data=_prompts(tmp_path, 5)), f"train.report_to=[{missing[0]}]")
    assert code == 2 and f"train.report_to[0]: {missing[0]!r} is not installed (pip install" in err, err


def test_pairs_per_step_above_the_usable_pairs(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(f'{{"prompt": "Q{i}?", "chosen": " yes {i}", "rejected": " no"}}\n' for i in range(3)))
    body = f"algorithm: dpo\nmodel: {{path: {tiny_model_dir}}}\ndata: {{train: {rows}}}\n"
    code, err = _train(tmp_path, body, "train.pairs_per_step=4", "train.report_to=[none]")
    last = err.splitlines()[-1]
    assert code == 2 and f"align train: error: train.pairs_per_step: 4 per step, but {rows} has only 3" in last, err
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_an_error_prints_on_a_line_of_its_own_after_a_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import io
    import sys

    from tqdm import tqdm

    from alignment.cli import main
    from alignment.cli import train as train_command

    def run_with_a_bar(args: object) -> int:
        bar = tqdm(total=10, file=sys.stderr, desc="steps")
        bar.update(4)
        raise ConfigError("train.max_steps: boom")

    monkeypatch.setattr(train_command, "run", run_with_a_bar)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        assert main(["train", "recipe.yaml"]) == 2
    text = stderr.getvalue()
    assert "steps:  40%" in text and text.endswith("\nalign train: error: train.max_steps: boom\n"), repr(text)


def test_deepspeed_values_transformers_would_refuse_at_train_time_are_a_config_error() -> None:
    """A fixed micro-batch that does not match the recipe's per-process batch is found by transformers' own
    matching (`HfTrainerDeepSpeedConfig.trainer_config_process`, run when the TrainingArguments are built) and
    reported as one ConfigError line, not as a ValueError once training starts."""
    from types import SimpleNamespace

    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from alignment.learners.trainer_args import check_deepspeed_agrees

    args = SimpleNamespace(
        world_size=2, per_device_train_batch_size=4, gradient_accumulation_steps=1, max_grad_norm=1.0,
        learning_rate=1e-3, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, weight_decay=0.0,
        save_on_each_node=False, fp16=False, fp16_full_eval=False, bf16=False, bf16_full_eval=False,
    )  # fmt: skip
    for config, ok in [({"train_micro_batch_size_per_gpu": 3}, False), ({"train_batch_size": 8}, True)]:
        matched = HfTrainerDeepSpeedConfig({"zero_optimization": {"stage": 2}, **config})
        matched.trainer_config_process(args)
        holder = SimpleNamespace(hf_deepspeed_config=matched)
        if ok:
            check_deepspeed_agrees(holder)
            continue
        with pytest.raises(ConfigError) as info:
            check_deepspeed_agrees(holder)
        assert _one_line(info.value) == (
            "train.deepspeed: values disagree with the recipe (ds train_micro_batch_size_per_gpu=3 vs hf "
            'per_device_train_batch_size=4); set them to "auto"'
        )


def test_iterative_rounds_whose_prompts_cannot_fill_a_step(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, 3)
    body = (
        f"algorithm: dpo\niterative: {{rounds: 1, prompts: {prompts}, n: 2}}\n"
        "rewards: {objectives: [{name: l, component: length, args: {target: 5}}]}\n"
    )
    code, err = _train(tmp_path, body, "train.pairs_per_step=4", "train.report_to=[none]")
    assert code == 2 and err.splitlines()[-1] == (
        "align train: error: train.pairs_per_step: 4 per step, but the 3 prompts of iterative.prompts make at most 3 "
        "pairs per round (iterative.pairs: best-worst); lower train.pairs_per_step or add prompts"
    ), err
    assert not (tmp_path / "run").exists()
