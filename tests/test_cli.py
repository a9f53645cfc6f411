"""Bad input and bad destinations: one line naming the problem, exit code 2, nothing of the user's or of an earlier
run touched (`align train`, and the destinations of every command that writes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fault_components import unwritable_folder

from alignment.cli import main
from alignment.outputs import claim_folder

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


def tree_state(root: Path) -> dict[str, tuple[str, int] | None]:
    """Every file (content hash, mtime) and folder (None) under `root`: proves that nothing was written."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        if p.is_file()
        else None
        for p in sorted(root.rglob("*"))
    }


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if f"align {command}: error: " in line]
    assert len(lines) == 1, err
    return lines[0]


def test_folders_align_did_not_make_are_never_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh run goes only into a missing or empty folder; --resume only into a run folder align made (its
    marker). Everything else is refused in one line before anything is read or written (item 3 of issue 11)."""
    home = tmp_path / "home"
    user = home / "mine"
    user.mkdir(parents=True)
    (user / "config.yaml").write_text("my: own config\n")
    unmarked = home / "looks-like-a-run"
    unmarked.mkdir()
    (unmarked / "metrics.jsonl").write_text('{"step": 1}\n')
    (unmarked / "config.yaml").write_text("seed: 1\n")
    notes = home / "notes.txt"
    notes.write_text("mine\n")
    marked = home / "run"
    claim_folder(marked, "run")
    (marked / "checkpoint-3").mkdir()
    sweep = home / "sweep"
    claim_folder(sweep, "sweep")
    quickstart = str(REPO / "configs" / "quickstart.yaml")
    cases = [
        ([str(user)], "holds files align did not write; choose a new or empty folder"),
        ([str(unmarked)], "holds files align did not write"),
        ([str(notes)], "is a file, not a folder"),
        ([str(notes / "run")], f"cannot be created: {str(notes)!r} is a file"),
        ([str(marked)], "already holds a run; pass --resume to continue it"),
        ([str(sweep)], "holds a sweep; choose a new or empty folder"),
        ([str(user), "--resume"], "is not a folder made by align (no align-folder.json)"),
        ([str(unmarked), "--resume"], "is not a folder made by align"),
        ([str(sweep), "--resume"], "holds a sweep, not a run to continue"),
        ([str(home / "missing"), "--resume"], "does not exist; nothing to continue"),
        ([str(home / ("x" * 300))], "is not a usable path (File name too long)"),
        ([str(unmarked / "nested")], "is inside run folder"),
        ([str(marked / "checkpoint-3" / "run")], "is inside checkpoint"),  # rotation would delete it
    ]
    locked = unwritable_folder(tmp_path)
    if locked is not None:
        cases.append(([str(locked / "run")], "cannot be written: no write permission"))
    before = tree_state(home)
    for extra, message in cases:
        assert main(["train", quickstart, "--output-dir", *extra]) == 2, extra
        line = one_error_line(capsys, "train")
        assert message in line, (extra, line)
    assert tree_state(home) == before, "a refused command wrote something"


def test_sample_and_eval_rm_outputs_are_new_files_outside_run_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`align sample --out` and `align eval-rm --out` write new files only (or replace with --overwrite), never
    into a run folder or checkpoint, and refuse folders, files in the way and unwritable places in one line,
    before any model or data is loaded."""
    home = tmp_path / "home"
    run = home / "run"
    claim_folder(run, "run")
    (run / "checkpoint-2").mkdir()
    old_run = home / "old-run"  # a run folder from before markers: recognised by its files
    (old_run / "eval").mkdir(parents=True)
    (old_run / "config.yaml").write_text("seed: 1\n")
    existing = home / "pairs.jsonl"
    existing.write_text('{"mine": true}\n')
    (home / "folder").mkdir()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "a b", "rejected": "c"}) + "\n")
    cases = [
        (existing, "already exists; pass --overwrite to replace it"),
        (home / "folder", "is a folder; name a file"),
        (run / "pairs.jsonl", "is inside run folder"),
        (run / "checkpoint-2" / "pairs.jsonl", "is inside checkpoint"),
        (old_run / "eval" / "pairs.jsonl", "is inside run folder"),
        (existing / "pairs.jsonl", "is a file, not a folder"),
    ]
    locked = unwritable_folder(tmp_path)
    if locked is not None:
        cases.append((locked / "pairs.jsonl", "no write permission"))
    before = tree_state(home)
    for out, message in cases:
        sample = ["sample", "--model", "builtin:tiny-policy", "--prompts", "builtin:quickstart_prompts.jsonl"]
        assert main([*sample, "--reward", "repetition", "--out", str(out)]) == 2, out
        assert message in one_error_line(capsys, "sample"), out
        assert main(["eval-rm", "--reward", "repetition", "--data", str(pairs), "--out", str(out)]) == 2, out
        assert message in one_error_line(capsys, "eval-rm"), out
    sample = ["sample", "--model", "builtin:tiny-policy", "--prompts", "builtin:quickstart_prompts.jsonl"]
    assert main([*sample, "--reward", "repetition", "--out", str(home / "new.jsonl"), "--samples-out",
                 str(existing)]) == 2  # fmt: skip
    assert "--samples-out: " in one_error_line(capsys, "sample")
    assert tree_state(home) == before, "a refused command wrote something"
    # --overwrite replaces a file the user names (eval-rm is quick: no model).
    assert main(["eval-rm", "--reward", "repetition", "--data", str(pairs), "--out", str(existing), "--overwrite"]) == 0
    assert json.loads(existing.read_text())["pairs"] == 1


def test_evaluate_writes_only_into_run_folders_align_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`align evaluate` writes eval/ into marked run folders only; a folder that merely looks like a run (or a
    checkpoint) is refused before anything is loaded."""
    lookalike = tmp_path / "lookalike"
    (lookalike / "checkpoint-1").mkdir(parents=True)
    (lookalike / "checkpoint-1" / "COMPLETE").write_text('{"step": 1, "files": []}')
    (lookalike / "config.yaml").write_text((REPO / "configs" / "quickstart.yaml").read_text())
    before = tree_state(tmp_path)
    for folder in (lookalike, lookalike / "checkpoint-1"):
        assert main(["evaluate", str(folder), "--eval-data", "builtin:quickstart_eval_prompts.jsonl"]) == 2
        assert "not a run folder made by align train" in one_error_line(capsys, "evaluate")
    assert tree_state(tmp_path) == before


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


@pytest.mark.slow
def test_refused_resume_changes_nothing(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `--resume` refused for any reason (a recipe whose objectives or adapter no longer fit the checkpoint,
    a fresh run into the run folder) leaves every file of the run as it was; the files are rewritten only once
    the resumed training has started."""
    from fault_components import write_tiny_recipe

    from alignment.outputs import folder_kind

    recipe = str(write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1, save_steps=1))
    run = tmp_path / "run"
    assert main(["train", recipe, "--output-dir", str(run)]) == 0
    assert folder_kind(run) == "run"
    capsys.readouterr()
    before = tree_state(run)
    cases = [
        (["--resume", "--set", "rewards.objectives.0.name=renamed"], "does not fit this recipe (RewardConfigError"),
        (["--resume", "--set", "peft.r=4"], "does not fit this recipe"),
        ([], "already holds a run; pass --resume"),
    ]
    for extra, message in cases:
        assert main(["train", recipe, "--output-dir", str(run), "--set", "train.max_steps=2", *extra]) == 2, extra
        line = one_error_line(capsys, "train")
        assert message in line, (extra, line)
        assert tree_state(run) == before, f"{extra} changed the run folder"
    assert main(["train", recipe, "--output-dir", str(run), "--set", "train.max_steps=2", "--resume"]) == 0
    assert "max_steps: 2" in (run / "config.yaml").read_text()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
