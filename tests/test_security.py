"""Running someone else's recipe runs no code and loads no data the user did not ask for.

- `trust_remote_code` is off unless the recipe turns it on, and a warning says so when it is on; a model folder's
  own Python code never runs without it.
- Weights load from safetensors only (a pickled `pytorch_model.bin` is never unpickled); every `torch.load`,
  DeepSpeed's resume included, is weights-only.
- Reward code comes only from registered names or an explicit `module:function`; YAML is loaded safely; the
  source holds no `eval`/`exec`, unsafe YAML loading or pickle loading (checked on the syntax tree).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from fault_components import REPO, write_tiny_recipe

from alignment.errors import ConfigError
from alignment.learners.factory import build_composer, load_model_and_tokenizer
from alignment.recipes.recipe import ModelConfig, load_recipe
from rewards.errors import RewardConfigError
from rewards.registry import build_component


class _Evil:
    """Pickles into a call of os.system: unpickling it runs a shell command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def _sentinel_code(sentinel: Path) -> str:
    return f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('code ran')\n"


def test_trust_remote_code_is_off_unless_the_recipe_sets_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert ModelConfig().trust_remote_code is False
    assert load_recipe(REPO / "configs" / "quickstart.yaml").model.trust_remote_code is False
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)
    assert load_recipe(recipe).model.trust_remote_code is False
    assert load_recipe(recipe, ["model.trust_remote_code=true"]).model.trust_remote_code is True
    with pytest.raises(ConfigError, match="model.trust_remote_code: expected true or false, got 'yes please'"):
        load_recipe(recipe, ["model.trust_remote_code=yes please"])

    import inspect

    from rewards.reward_model import RewardModelComponent

    assert inspect.signature(RewardModelComponent).parameters["trust_remote_code"].default is False


def test_a_warning_says_when_trust_remote_code_is_on(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1), ["model.trust_remote_code=true"])
    with pytest.warns(UserWarning, match="model.trust_remote_code is on"):
        load_model_and_tokenizer(recipe)
    with pytest.warns(UserWarning, match="objective 'x': trust_remote_code is on"):
        build_component("x", "fault_components:flaky", {"trust_remote_code": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model_and_tokenizer(load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)))


def _model_with_custom_code(tmp_path: Path, tiny_model_dir: Path, model_type: str) -> tuple[Path, Path]:
    folder = tmp_path / f"custom-{model_type}"
    shutil.copytree(tiny_model_dir, folder)
    sentinel = tmp_path / f"ran-{model_type}"
    (folder / "evil_modeling.py").write_text(_sentinel_code(sentinel), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {
        "AutoConfig": "evil_modeling.EvilConfig",
        "AutoModelForCausalLM": "evil_modeling.EvilModel",
    }
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil_modeling.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder, sentinel


def test_model_folder_code_does_not_run_without_trust_remote_code(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_path = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)
    # A known architecture with an auto_map: loaded with the library's own classes, the folder's code ignored.
    known, known_ran = _model_with_custom_code(tmp_path, tiny_model_dir, "qwen2")
    model, _ = load_model_and_tokenizer(load_recipe(recipe_path, [f"model.path={known}"]))
    assert type(model).__module__.startswith("transformers.") and not known_ran.exists()
    # An architecture only the folder's code defines: refused in one line, nothing runs.
    custom, custom_ran = _model_with_custom_code(tmp_path, tiny_model_dir, "evil-arch")
    with pytest.raises(ConfigError) as info:
        load_model_and_tokenizer(load_recipe(recipe_path, [f"model.path={custom}"]))
    assert str(info.value).startswith("model.path: cannot load") and "\n" not in str(info.value)
    assert not custom_ran.exists()


def test_pickled_weights_are_never_unpickled(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    sentinel = tmp_path / "pickle-ran"
    torch.save({"model.embed_tokens.weight": _Evil(f"touch {sentinel}")}, folder / "pytorch_model.bin")
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1), [f"model.path={folder}"])
    with pytest.raises(ConfigError, match=r"model.path: cannot load .*model.safetensors"):
        load_model_and_tokenizer(recipe)
    assert not sentinel.exists()


def test_deepspeed_resume_loads_weights_only(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    from alignment.learners.checkpointing import weights_only_deepspeed_loads

    # What a ZeRO-2 optimizer partition holds: tensors, a loss scaler, the stage enum, fragment addresses.
    partition = {
        "optimizer_state_dict": {"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients},
        "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}],
        "fp32_flat_groups": [torch.ones(4)],
    }
    good, evil = tmp_path / "zero_pp_rank_0_optim_states.pt", tmp_path / "evil_optim_states.pt"
    torch.save(partition, good)
    sentinel = tmp_path / "deepspeed-pickle-ran"
    torch.save({"optimizer_state_dict": _Evil(f"touch {sentinel}")}, evil)
    engine = TorchCheckpointEngine()
    with weights_only_deepspeed_loads():
        loaded = engine.load(str(good), map_location="cpu")
        assert torch.equal(loaded["fp32_flat_groups"][0], torch.ones(4))
        with pytest.raises(Exception, match="Weights only load failed"):
            engine.load(str(evil), map_location="cpu")
    assert not sentinel.exists()
    assert TorchCheckpointEngine.load.__qualname__ == "TorchCheckpointEngine.load", "restored after the run"


def test_recipes_cannot_construct_python_objects(tmp_path: Path, tiny_model_dir: Path) -> None:
    sentinel = tmp_path / "yaml-ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"seed: !!python/object/apply:os.system ['touch {sentinel}']\n")
    with pytest.raises(ConfigError, match="not valid YAML .could not determine a constructor for the tag"):
        load_recipe(recipe)
    good = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_recipe(good, [f"train.max_steps=!!python/object/apply:os.system ['touch {sentinel}']"])
    assert not sentinel.exists()


@pytest.mark.parametrize(
    "spec",
    [
        "__import__('os').system('touch {s}')",
        "os.system('touch {s}')",
        "lambda prompts, completions, **kw: [1.0]",
        "eval",
        "rewards.rules:LengthReward; import os",
        "rewards.rules:LengthReward()",
        'exec(\'open("{s}", "w")\')',
    ],
)
def test_reward_code_runs_only_from_registered_names_or_import_paths(
    tmp_path: Path, tiny_model_dir: Path, spec: str
) -> None:
    sentinel = tmp_path / "reward-ran"
    objective = json.dumps({"name": "r", "component": spec.format(s=sentinel)})
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1, objectives=f"- {objective}")
    with pytest.raises(ConfigError, match=r"rewards.objectives\[0\].component: unknown reward component"):
        load_recipe(recipe)  # refused while the recipe is validated, before anything is imported
    with pytest.raises(RewardConfigError, match="unknown reward component"):
        build_component("r", spec.format(s=sentinel))
    assert not sentinel.exists()


def test_explicit_import_paths_and_registered_names_work() -> None:
    assert build_component("flaky", "fault_components:flaky").name == "flaky"
    assert build_component("len", "length", {"unit": "words", "mode": "count"})(["p"], ["a b"]) == [2.0]
    function = build_component("words", "untrusted_components:word_count", {"bonus": 1.0})
    assert function(["p"], ["a b c"]) == [4.0] and function.name == "words"
    component = build_component("words", "untrusted_components:WordCount", {"bonus": 0.5})
    assert component(["p"], ["a b"]) == [2.5] and component.name == "words"


# (spec, args, the refusal): standard-library processes, threads, shell and file functions, builtins, and in a
# user module a plain class, a callable object, a partial, a function without TRL's signature, a dunder.
NOT_REWARD_CODE = [
    ("subprocess:Popen", {"args": ["touch", "{s}"]}, "names the standard-library module 'subprocess'"),
    ("multiprocessing:Process", {}, "standard-library module 'multiprocessing'"),
    ("threading:Thread", {}, "standard-library module 'threading'"),
    ("os:system", {"command": "touch {s}"}, "standard-library module 'os'"),
    ("shutil:rmtree", {"path": "{s}"}, "standard-library module 'shutil'"),
    ("builtins:exec", {}, "standard-library module 'builtins'"),
    ("antigravity:fly", {}, "standard-library module 'antigravity'"),  # importing it would open a web browser
    ("torch.multiprocessing:Process", {}, "is a class that does not subclass rewards.base.RewardComponentBase"),
    ("untrusted_components:NotAComponent", {"sentinel": "{s}"}, "does not subclass rewards.base.RewardComponentBase"),
    ("untrusted_components:AbstractComponent", {}, "is abstract"),
    ("untrusted_components:callable_object", {"sentinel": "{s}"}, "is a _CallableObject, not a Python function"),
    ("untrusted_components:partial_reward", {"sentinel": "{s}"}, "is a partial, not a Python function"),
    ("untrusted_components:no_reward_signature", {"sentinel": "{s}"}, "does not have TRL's reward signature"),
    ("torch:load", {"f": "{s}"}, "does not have TRL's reward signature"),
    ("untrusted_components:__builtins__", {}, "is a special name, not reward code"),
]


@pytest.mark.parametrize(("spec", "args", "message"), NOT_REWARD_CODE, ids=[c[0] for c in NOT_REWARD_CODE])
def test_module_attr_components_are_only_reward_functions_or_component_classes(
    tmp_path: Path, tiny_model_dir: Path, spec: str, args: dict[str, object], message: str
) -> None:
    """Issue 11.1: `component: "module:Name"` used to construct any class with the recipe's args (a process class
    started a process). Now only a plain function with TRL's signature or a RewardComponentBase subclass runs."""
    import sys

    sentinel = tmp_path / "ran"
    filled = json.loads(json.dumps(args).replace("{s}", str(sentinel)))
    objective = json.dumps({"name": "r", "component": spec, "args": filled})
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1, objectives=f"- {objective}")
    stdlib = "standard-library" in message or "special name" in message
    with pytest.raises(ConfigError) as info:
        build_composer(load_recipe(recipe))
    text = str(info.value)
    assert text.startswith("rewards.objectives[0]") and message in text and "\n" not in text, text
    assert ("nothing was imported" in text) if stdlib else ("is abstract" in text or "nothing was called" in text)
    with pytest.raises(RewardConfigError, match=message.replace("(", r"\(")):
        build_component("r", spec, filled)
    assert not sentinel.exists()
    assert "antigravity" not in sys.modules


def test_a_recipe_imports_its_reward_module_when_the_composer_is_built(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What runs when (RELIABILITY.md, "What a recipe can run"): loading and validating the recipe imports
    nothing; building the composer imports the named module (its top-level code runs); the function runs only
    when it scores."""
    import sys

    sentinel = tmp_path / "imported"
    monkeypatch.setenv("ALIGN_TEST_IMPORT_SENTINEL", str(sentinel))
    monkeypatch.delitem(sys.modules, "import_marker_component", raising=False)
    objective = json.dumps({"name": "r", "component": "import_marker_component:reward"})
    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1, objectives=f"- {objective}"))
    assert not sentinel.exists() and "import_marker_component" not in sys.modules
    composer = build_composer(recipe)
    assert sentinel.read_text() == "imported"
    assert composer.objectives[0].component(["p"], ["a"]) == [1.0]


def test_a_reward_module_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    module = tmp_path / "broken_reward_module.py"
    module.write_text("raise RuntimeError('no GPU here\\nsecond line')\n", encoding="utf-8")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(RewardConfigError) as info:
            build_component("r", "broken_reward_module:reward")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_reward_module", None)
    assert str(info.value) == "objective 'r': importing 'broken_reward_module' raised RuntimeError: no GPU here"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"worker_extension_cls": "evil.module.Extension"}, "'worker_extension_cls' is not an allowed vLLM option"),
        ({"worker_cls": "evil.Worker"}, "'worker_cls' is not an allowed vLLM option"),
        ({"logits_processors": ["evil:Proc"]}, "'logits_processors' is not an allowed vLLM option"),
        ({"compilation_config": {"backend": "evil.backend"}}, "'compilation_config' is not an allowed vLLM option"),
        ({"tokenizer": "/elsewhere"}, "'tokenizer' is not an allowed vLLM option"),
        ({"load_format": "pt"}, "'load_format' is not an allowed vLLM option"),
        ({"trust_remote_code": True}, "rollout.vllm_options.trust_remote_code: set by the recipe, not here"),
        ({"model": "/other/model"}, "rollout.vllm_options.model: set by the recipe, not here: use model.path"),
        ({"enforce_eager": "yes"}, "rollout.vllm_options.enforce_eager: expected true or false"),
        ({"max_model_len": -5}, "rollout.vllm_options.max_model_len: expected a positive integer"),
        ({"distributed_executor_backend": "evil.Executor"}, "distributed_executor_backend: choose one of"),
        ({"quantization": "../../x"}, "rollout.vllm_options.quantization: expected a short name"),
        ({"swap_space": 10**400}, "rollout.vllm_options.swap_space: expected a number >= 0"),
    ],
)
def test_vllm_options_cannot_import_code_load_files_or_turn_on_remote_code(
    tmp_path: Path, tiny_model_dir: Path, options: dict[str, object], message: str
) -> None:
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_recipe(recipe, [f"rollout.vllm_options={json.dumps(options)}"])
    allowed = {"enforce_eager": True, "max_model_len": 256, "kv_cache_dtype": "fp8", "swap_space": 0}
    assert load_recipe(recipe, [f"rollout.vllm_options={json.dumps(allowed)}"]).rollout.vllm_options == allowed


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"torch_autocast": {"enabled": True, "lower_precision_safe_modules": ["subprocess.Popen"]}},
            "imports classes",
        ),
        ({"csv_monitor": {"enabled": True, "output_path": "/tmp/anywhere"}}, "section 'csv_monitor' is not allowed"),
        ({"flops_profiler": {"enabled": True, "output_file": "/etc/x"}}, "section 'flops_profiler' is not allowed"),
        ({"wandb": {"enabled": True}}, "section 'wandb' is not allowed"),
        ({"autotuning": {"enabled": True}}, "section 'autotuning' is not allowed"),
    ],
)
def test_deepspeed_json_cannot_import_classes_or_start_monitors(
    tmp_path: Path, tiny_model_dir: Path, config: dict[str, object], message: str
) -> None:
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **config}), encoding="utf-8")
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1)
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe, [f"train.deepspeed={path}"])
    assert str(info.value).startswith("train.deepspeed: ds.json: ") and message in str(info.value)


# -- the source itself -------------------------------------------------------------------------------------------

SOURCE_DIRS = ("alignment", "rewards", "rollout")
MODEL_LOADERS = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification")
# Model loads outside this task's files that do not pass use_safetensors=True yet (file, loader); listed so that
# the test still catches new ones. Remove an entry when its owner adds use_safetensors=True.
KNOWN_NON_SAFETENSORS_LOADS: set[tuple[str, str]] = set()


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _safe_loader(call: ast.Call, tree: ast.AST) -> bool:
    """yaml.load(..., Loader=...) with a SafeLoader class, directly or through a variable assigned one."""
    loader = next((k.value for k in call.keywords if k.arg == "Loader"), None)
    if loader is None:
        return False
    if "Safe" in ast.unparse(loader) and "Unsafe" not in ast.unparse(loader):
        return True
    if isinstance(loader, ast.Name):
        assigned = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == loader.id for t in node.targets)
        ]
        return bool(assigned) and all("Safe" in ast.unparse(v) and "Unsafe" not in ast.unparse(v) for v in assigned)
    return False


def _keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


def test_source_has_no_eval_exec_unsafe_yaml_pickle_or_unsafe_torch_load() -> None:
    problems, non_safetensors = [], set()
    files = [p for d in SOURCE_DIRS for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        relative = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=relative)
        for call in _calls(tree):
            name = _dotted(call.func)
            where = f"{relative}:{call.lineno} {name}"
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile", "__import__"):
                problems.append(f"{where}: runs strings as code")
            if name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all") or (
                name in ("yaml.load", "yaml.load_all") and not _safe_loader(call, tree)
            ):
                problems.append(f"{where}: use yaml.safe_load")
            if name in ("pickle.load", "pickle.loads", "dill.load", "dill.loads", "marshal.loads"):
                problems.append(f"{where}: unpickles")
            if name == "torch.load" and not _keyword_is_true(call, "weights_only"):
                problems.append(f"{where}: torch.load without weights_only=True")
            loader = name.rsplit(".", 1)[0] if name.endswith(".from_pretrained") else ""
            if loader in MODEL_LOADERS and not _keyword_is_true(call, "use_safetensors"):
                non_safetensors.add((relative, loader))
    assert not problems, "\n".join(problems)
    assert ("alignment/learners/factory.py", "AutoModelForCausalLM") not in non_safetensors
    assert non_safetensors <= KNOWN_NON_SAFETENSORS_LOADS, sorted(non_safetensors - KNOWN_NON_SAFETENSORS_LOADS)


YAML_LOADER_MODULE = "alignment/recipes/yaml_loading.py"


def test_every_yaml_the_project_reads_goes_through_the_one_bounded_loader() -> None:
    """Issue 11.2: no module but alignment/recipes/yaml_loading.py parses YAML (yaml.load/safe_load/compose/...),
    so alias bombs, deep nesting and duplicate keys are refused wherever a YAML comes from."""
    readers = []
    for folder in (*SOURCE_DIRS, "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for call in _calls(ast.parse(path.read_text(encoding="utf-8"))):
                name = _dotted(call.func)
                if name.startswith("yaml.") and name.split(".")[1] in {
                    "load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all", "compose",
                    "compose_all", "parse", "scan",
                }:  # fmt: skip
                    readers.append(f"{relative}:{call.lineno} {name}")
    assert readers and all(r.startswith(YAML_LOADER_MODULE) for r in readers), readers
