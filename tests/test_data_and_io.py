"""Dataset row checks, atomic writes, metrics truncation on resume, and checkpoint discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.errors import DataError
from alignment.io import MetricsWriter, atomic_write_json, atomic_write_text
from alignment.learners.checkpointing import COMPLETE_MARKER, checkpoint_step, complete_checkpoints, latest_checkpoint
from alignment.recipes.prompt_data import load_prompts


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loads_standard_and_conversational_prompts(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "Q1", "topic": "a"}, {"prompt": "Q2", "topic": "b"}],
    )
    dataset = load_prompts(path)
    assert dataset["prompt"] == ["Q1", "Q2"] and dataset["topic"] == ["a", "b"]
    chat = write_jsonl(tmp_path / "c.jsonl", [{"question": [{"role": "user", "content": "hi"}]}])
    assert load_prompts(chat, prompt_column="question")["prompt"][0][0]["content"] == "hi"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"prompt": "ok"}, {"text": "no prompt"}], "row 2 has no 'prompt' field (fields: ['text'])"),
        ([{"prompt": "   "}], "row 1: the prompt is empty"),
        ([{"prompt": 3}], "row 1: the prompt must be a non-empty string or list of chat messages, got int"),
        ([{"prompt": [{"role": "user"}]}], "row 1: message 0 must be an object with 'role' and 'content'"),
        ([{"prompt": [{"role": "robot", "content": "x"}]}], "row 1: message 0 has unknown role 'robot'"),
        ([], "the dataset has no rows"),
    ],
)
def test_bad_rows_are_named(tmp_path: Path, rows: list[object], message: str) -> None:
    with pytest.raises(DataError) as info:
        load_prompts(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert message in str(info.value)


def test_bad_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_prompts(broken)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"prompt": "\xff\xfe"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_prompts(binary)
    with pytest.raises(DataError, match="does not exist"):
        load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unsupported dataset format '.csv'"):
        (tmp_path / "x.csv").write_text("prompt\nhi\n")
        load_prompts(tmp_path / "x.csv")


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.txt", "one")
    atomic_write_json(tmp_path / "b.json", {"x": float("nan"), "y": [1, 2]})
    assert (tmp_path / "a.txt").read_text() == "one"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": None, "y": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_metrics_truncate_after_drops_later_steps_and_torn_lines(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    for step in range(1, 6):
        writer.write({"step": step, "loss": 0.1 * step})
    with open(writer.path, "a") as handle:
        handle.write('{"step": 6, "lo')  # a line torn by a kill
    assert [r["step"] for r in writer.read()] == [1, 2, 3, 4, 5]
    writer.truncate_after(3)
    assert [r["step"] for r in writer.read()] == [1, 2, 3]


def test_only_complete_checkpoints_count(tmp_path: Path) -> None:
    for step, complete in [(10, True), (20, True), (30, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-20"]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert checkpoint_step(tmp_path / "checkpoint-20") == 20
    assert latest_checkpoint(tmp_path / "nothing") is None


# -- chat prompts against the tokenizer (issue 11, item 4) ---------------------------------------------------------

# A strict template, as many models ship: only user and assistant turns.
STRICT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
    "{{ raise_exception('Only user and assistant roles are supported, got ' + m['role']) }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def strict_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with STRICT_TEMPLATE as its chat template (the tiny model itself has none)."""
    import shutil

    folder = tmp_path_factory.mktemp("strict") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": STRICT_TEMPLATE}))
    return folder


def chat(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in turns]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from alignment.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    return code, (lines[-1] if lines else err)


def grpo_recipe(folder: Path, model: Path, prompts: Path, extra: str = "") -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"model: {{path: {model}}}\ndata: {{train: {prompts}}}\nrollout: {{max_new_tokens: 4}}\n"
        "rewards: {objectives: [{name: len, component: length, args: {unit: words, mode: target, target: 3}}]}\n"
        "train: {max_steps: 1, prompts_per_step: 2, num_generations: 2, report_to: [none]}\n" + extra
    )
    return recipe


def test_chat_prompts_need_a_template_that_accepts_them_before_grpo_starts(
    tmp_path: Path, tiny_model_dir: Path, strict_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Conversational prompts with a tokenizer that has no chat template, or whose template rejects a row, stop
    `align train` before anything is written, with one line naming the file, the row and the field."""
    hello = chat(("user", "Tell me about bread."))
    rows = [{"prompt": hello}, {"prompt": hello}, {"prompt": chat(("system", "Be brief."), ("user", "Rivers?"))}]
    prompts = write_jsonl(tmp_path / "chat.jsonl", rows)
    run = tmp_path / "run"
    code, line = run_cli(
        ["train", str(grpo_recipe(tmp_path, tiny_model_dir, prompts)), "--output-dir", str(run)], capsys
    )
    assert code == 2 and f"{prompts}: row 1, field 'prompt': chat messages need a chat template" in line, line
    code, line = run_cli(
        ["train", str(grpo_recipe(tmp_path, strict_model_dir, prompts)), "--output-dir", str(run)], capsys
    )
    assert code == 2, line
    assert f"{prompts}: row 3, field 'prompt': the tokenizer's chat template rejects these messages" in line, line
    assert "Only user and assistant roles are supported, got system" in line
    assert not run.exists()


def test_chat_preference_rows_are_rendered_as_trl_renders_them_before_training(
    tmp_path: Path, strict_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DPO renders prompt + chosen and prompt + rejected: a rejected answer the template refuses is named by its
    row in the file (row 2 is skipped as chosen == rejected, so positions and file rows differ)."""
    prompt = chat(("user", "Tell me about bread."))
    rows = [
        {"prompt": prompt, "chosen": chat(("assistant", "Flour and water.")), "rejected": chat(("assistant", "No."))},
        {"prompt": prompt, "chosen": chat(("assistant", "Same.")), "rejected": chat(("assistant", "Same."))},
        {
            "prompt": prompt,
            "chosen": chat(("assistant", "Baked.")),
            "rejected": chat(("assistant", "Hm."), ("tool", "{}")),
        },
    ]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(
        f"algorithm: dpo\nmodel: {{path: {strict_model_dir}}}\ndata: {{train: {pairs}}}\n"
        "train: {max_steps: 1, pairs_per_step: 2, report_to: [none]}\n"
    )
    run = tmp_path / "run"
    code, line = run_cli(["train", str(recipe), "--output-dir", str(run)], capsys)
    assert code == 2 and f"{pairs}: row 3, field 'rejected': the tokenizer's chat template rejects" in line, line
    assert not run.exists()


def test_chat_prompts_are_checked_before_iterative_rounds_sweeps_and_sampling(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check guards every command that samples from chat prompts (iterative rounds, a sweep's held-out
    set, align sample, align evaluate), before it writes anything."""
    prompts = write_jsonl(tmp_path / "chat.jsonl", [{"prompt": chat(("user", f"Question {i}?"))} for i in range(3)])
    expected = f"{prompts}: row 1, field 'prompt': chat messages need a chat template"
    iterative = tmp_path / "iterative.yaml"
    iterative.write_text(
        f"algorithm: dpo\nmodel: {{path: {tiny_model_dir}}}\n"
        "rewards: {objectives: [{name: len, component: length, args: {unit: words, mode: target, target: 3}}]}\n"
        f"iterative: {{rounds: 1, prompts: {prompts}, n: 2, steps_per_round: 1}}\n"
        "train: {pairs_per_step: 2, report_to: [none]}\n"
    )
    code, line = run_cli(["train", str(iterative), "--output-dir", str(tmp_path / "it")], capsys)
    assert code == 2 and expected in line, line
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    sweep = ["sweep", str(grpo_recipe(tmp_path, tiny_model_dir, plain)), "--weights", "1", "--eval-data", str(prompts)]
    code, line = run_cli([*sweep, "--output-dir", str(tmp_path / "sweep")], capsys)
    assert code == 2 and expected in line, line
    sample = ["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--reward", "repetition"]
    code, line = run_cli([*sample, "--out", str(tmp_path / "pairs.jsonl"), "--max-tokens", "2"], capsys)
    assert code == 2 and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.jsonl", "iterative.yaml", "plain.jsonl", "recipe.yaml"]
    # align evaluate: a run folder (marked, with a complete checkpoint) and chat held-out prompts.
    import yaml

    from alignment.outputs import claim_folder
    from alignment.recipes.recipe import load_recipe

    run = tmp_path / "run"
    claim_folder(run, "run")
    (run / "config.yaml").write_text(
        yaml.safe_dump(load_recipe(grpo_recipe(tmp_path, tiny_model_dir, plain)).to_dict())
    )
    (run / "checkpoint-1").mkdir()
    (run / "checkpoint-1" / "COMPLETE").write_text('{"step": 1, "files": []}')
    code, line = run_cli(["evaluate", str(run), "--eval-data", str(prompts)], capsys)
    assert code == 2 and expected in line, line
    assert not (run / "eval").exists()


def test_rollout_server_answers_400_for_chat_prompts_it_cannot_render(
    tiny_model_dir: Path, strict_model_dir: Path
) -> None:
    """`align serve-rollout`'s /generate: a chat prompt the served tokenizer cannot render is the client's error
    (400, one line naming the prompt), not a server failure (500); a prompt the template accepts is served."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollout.base import RolloutServerError, SamplingParams
    from rollout.remote_engine import RemoteEngine
    from rollout.server import RolloutServer
    from rollout.transformers_engine import TransformersEngine

    params = SamplingParams(max_tokens=2, seed=0)
    for folder, bad, message in [
        (tiny_model_dir, chat(("user", "hi")), "chat messages need a chat template"),
        (strict_model_dir, chat(("system", "x"), ("user", "hi")), "rejects these messages (TemplateError"),
    ]:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        engine = TransformersEngine(AutoModelForCausalLM.from_pretrained(str(folder)), tokenizer, batch_size=4)
        server = RolloutServer(engine, port=0).start()
        try:
            remote = RemoteEngine(server.url, retries=0)
            with pytest.raises(RolloutServerError, match=r"HTTP 400: .*prompt 1: ") as caught:
                remote.generate(["plain text is fine", bad], params)
            assert message in str(caught.value) and "\n" not in str(caught.value)
            if folder == strict_model_dir:
                (group,) = remote.generate([chat(("user", "hi"))], params)
                assert len(group) == 1 and group[0].prompt_ids
        finally:
            server.shutdown()
