"""`align train` on bad input: one line naming the problem, exit code 2, nothing of an earlier run touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignment.cli import main

REPO = Path(__file__).resolve().parent.parent


def recipe(tmp_path: Path, body: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


GOOD_REWARDS = "rewards: {objectives: [{name: len, component: length, args: {target: 5}}]}\n"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("algorithm: sft\n" + GOOD_REWARDS, "algorithm: unknown algorithm 'sft'"),
        ("rewards: {objectives: [{name: x, component: nope}]}\n", "unknown reward component 'nope'"),
        ("rewards: {objectives: [{name: x, component: length, args: {mode: band, band: [9, 1]}}]}\n", "lower <= upper"),
        ("rewards: {objectives: [{name: x, component: length, args: {colour: red}}]}\n", "bad arguments for 'length'"),
        ("rewards: {objectives: [{name: x, component: 'no_such_module_xyz:f'}]}\n", "cannot import module"),
        ("data: {train: missing.jsonl}\n" + GOOD_REWARDS, "data.train: 'missing.jsonl' does not exist"),
        ("train: {max_steps: -1}\n" + GOOD_REWARDS, "train.max_steps: must be a positive integer"),
    ],
)
def test_bad_recipes_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, fragment: str
) -> None:
    code = main(["train", str(recipe(tmp_path, body)), "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("align train: error:")
    assert fragment in err
    assert not (tmp_path / "run").exists()


def test_row_without_prompt_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_model_dir: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "no"}) + "\n")
    body = f"model: {{path: {tiny_model_dir}}}\ndata: {{train: {data}}}\n" + GOOD_REWARDS
    code = main(["train", str(recipe(tmp_path, body)), "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert "rows.jsonl: row 2 has no 'prompt' field" in capsys.readouterr().err


def test_bad_model_path_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "ok"}) + "\n")
    body = f"model: {{path: {empty}}}\ndata: {{train: {data}}}\n" + GOOD_REWARDS
    assert main(["train", str(recipe(tmp_path, body)), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.path:" in err and "is not a model directory (no config.json)" in err


def test_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = (run / "metrics.jsonl").read_bytes()
    code = main(["train", str(REPO / "configs" / "quickstart.yaml"), "--output-dir", str(run)])
    assert code == 2
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == before
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]


def test_console_entry_point_exit_code(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "train", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("align train: error: recipe")
