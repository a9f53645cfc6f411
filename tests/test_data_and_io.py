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
