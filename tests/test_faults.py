"""Injected faults: reward components that raise, return NaN/inf or hang, and a disk that fills up mid-run.

The reward faults run for real through `align train` (and a separate subprocess checks that a process exits
although hung reward threads are still asleep). The disk-full case is run twice: with the OSError injected into the
checkpoint writer (always), and on a real 4 MiB tmpfs that a helper fills after the first checkpoint
(where user namespaces allow mounting one).
"""

from __future__ import annotations

import errno
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_components import (
    REPO,
    check_checkpoints,
    cli_env,
    hangs,
    metrics_records,
    record_result,
    write_tiny_recipe,
)

from alignment.cli import main
from alignment.errors import ConfigError
from alignment.io import MetricsWriter, StorageError, atomic_write_text
from alignment.learners.checkpointing import COMPLETE_MARKER, complete_checkpoints, is_complete, remove_checkpoint
from alignment.learners.factory import build_composer
from alignment.recipes.recipe import load_recipe
from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardComponentError, RewardConfigError
from rewards.registry import build_component
from rewards.weighting import StaticWeights

# -- reward timeouts (composer level) --------------------------------------------------------------------------


def _hang_bucket_rows() -> list[str]:
    """Completions for `hangs`: rows 0-2 answer, row 3 hangs (CRC bucket 0), rows 4-5 are never called."""
    from fault_components import _bucket

    ok = [f"answer {i}" for i in range(40) if _bucket(f"answer {i}", 4) != 0]
    bad = [f"answer {i}" for i in range(40) if _bucket(f"answer {i}", 4) == 0]
    return ok[:3] + bad[:1] + ok[3:5]


def test_hanging_component_times_out_and_its_rows_are_counted() -> None:
    rows = _hang_bucket_rows()
    composer = RewardComposer(
        [
            Objective("slow", build_component("slow", "fault_components:hangs"), timeout=0.2),
            Objective("fine", build_component("fine", "length", {"unit": "words", "mode": "count"})),
        ],
        StaticWeights([1.0, 1.0]),
        timeout=30.0,
    )
    start = time.perf_counter()
    result = composer.score(["p"] * len(rows), rows)
    elapsed = time.perf_counter() - start
    # The batch call and row 3 time out (0.2 s each); rows after the first row timeout are not called again.
    assert elapsed < 3.0
    np.testing.assert_array_equal(result.matrix[:3, 0], [2.0, 2.0, 2.0])
    assert np.isnan(result.matrix[3:, 0]).all()
    assert result.timeouts == {"slow": 3, "fine": 0}
    assert result.failures == {"slow": 3, "fine": 0}
    assert np.isfinite(result.matrix[:, 1]).all()
    composition = composer.compose(result.matrix, group_size=2)
    assert np.isfinite(composition.advantages).all()


def test_component_timing_out_on_every_row_does_not_stop_the_run() -> None:
    composer = RewardComposer(
        [Objective("dead", build_component("dead", "fault_components:hang_forever"))],
        StaticWeights([1.0]),
        timeout=0.1,
    )
    start = time.perf_counter()
    result = composer.score(["p"] * 8, ["a b"] * 8)
    assert time.perf_counter() - start < 2.0, "a dead component costs at most two timeouts per batch"
    assert np.isnan(result.matrix).all() and result.timeouts == {"dead": 8} and result.failures == {"dead": 8}
    assert np.isnan(composer.score_objective(0, ["p"], ["a"])).all()


def test_objective_timeout_overrides_the_default_and_raising_everywhere_still_stops() -> None:
    quick = Objective("quick", build_component("quick", "fault_components:hangs"), timeout=0.05)
    composer = RewardComposer([quick], StaticWeights([1.0]), timeout=1000.0)
    assert composer.timeout_of(0) == 0.05
    assert RewardComposer([Objective("x", quick.component)], StaticWeights([1.0]), timeout=2.0).timeout_of(0) == 2.0
    with pytest.raises(RewardConfigError, match=r"x\.timeout: must be a positive number"):
        RewardComposer([Objective("x", quick.component, timeout=0)], StaticWeights([1.0]))
    with pytest.raises(RewardConfigError, match="timeout: must be a positive number"):
        RewardComposer([Objective("x", quick.component)], StaticWeights([1.0]), timeout=float("inf"))

    def always_raises(prompts, completions, **_):
        raise KeyError("nope")

    raising = RewardComposer([Objective("bad", always_raises)], StaticWeights([1.0]), timeout=5.0)
    with pytest.raises(RewardComponentError, match="'bad' failed on all 2 rows: KeyError"):
        raising.score(["p", "p"], ["a", "b"])


# -- rewards that poison the batch: huge values, NaN everywhere ---------------------------------------------------


def _words_or_none(injected: set[str]):
    """Word counts, None (not applicable) on the rows in `injected`: what a huge value must amount to."""

    def component(prompts, completions, **_):
        return [None if c in injected else float(len(c.split())) for c in completions]

    return component


@pytest.mark.parametrize("normalization", ["group", "batch", "none", "decoupled"])
def test_huge_values_count_as_failures_and_leave_the_other_objectives_in_charge(normalization: str) -> None:
    """+-1e308 on half the rows: those rows are counted as failures and composed exactly as if the component had
    said "not applicable" there; the healthy objective still moves the advantages (before: all were 0)."""
    from fault_components import _bucket

    completions = [" ".join(["w"] * (1 + i % 5)) + f" {i}" for i in range(16)]
    injected = {c for c in completions if _bucket(c, 4) < 2}
    assert 2 <= len(injected) <= 14
    healthy = build_component("length", "length", {"unit": "words", "mode": "target", "target": 3})

    def composer(first) -> RewardComposer:
        return RewardComposer(
            [Objective("huge", first), Objective("length", healthy)], StaticWeights([1.0, 1.0]), normalization
        )

    poisoned = composer(build_component("huge", "fault_components:huge_values"))
    result = poisoned.score(["p"] * 16, completions)
    assert result.failures == {"huge": len(injected), "length": 0}
    assert np.isnan(result.matrix[[c in injected for c in completions], 0]).all()
    expected_matrix = composer(_words_or_none(injected)).score(["p"] * 16, completions).matrix
    np.testing.assert_array_equal(result.matrix, expected_matrix)
    got = poisoned.compose(result.matrix, group_size=4)
    assert np.isfinite(got.rewards).all() and np.isfinite(got.advantages).all()
    assert np.abs(got.advantages).max() > 0.1, "the healthy objective still gives a learning signal"
    # The composer's compose on the raw values (as a learner handing it any matrix would) is safe too.
    raw = np.column_stack([build_component("huge", "fault_components:huge_values")(["p"] * 16, completions),
                           result.matrix[:, 1]])  # fmt: skip
    assert np.isfinite(poisoned.compose(raw, group_size=4).advantages).all()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([math.nan] * 4, "returned nan, which is not a finite number within"),
        ([math.inf, -math.inf, math.inf, math.nan], "returned inf"),
        ([1e308, -1e308, 2e9, -5e12], "returned 1e+308"),
    ],
)
def test_component_failing_by_value_on_every_row_stops_with_its_name(values: list[float], message: str) -> None:
    composer = RewardComposer(
        [Objective("fine", _words_or_none(set())), Objective("broken", lambda prompts, completions, **_: values)],
        StaticWeights([1.0, 1.0]),
    )
    with pytest.raises(
        RewardComponentError, match=rf"^reward objective 'broken' failed on all 4 rows: {re.escape(message)}"
    ):
        composer.score(["p"] * 4, ["a", "b c", "d", "e f g"])


def test_a_mix_of_raising_and_bad_values_on_every_row_stops_but_none_is_not_a_failure() -> None:
    def mixed(prompts, completions, **_):
        if len(completions) > 1:
            raise ValueError("batch refused")
        if completions[0] == "a":
            raise KeyError("row a")
        return [math.nan]

    with pytest.raises(RewardComponentError, match=r"'mixed' failed on all 3 rows: KeyError: 'row a'"):
        RewardComposer([Objective("mixed", mixed)], StaticWeights([1.0])).score(["p"] * 3, ["a", "b", "c"])
    # None means "does not apply": a component that applies to no row of a batch is not broken.
    silent = RewardComposer([Objective("n_a", lambda prompts, completions, **_: [None] * len(completions))],
                            StaticWeights([1.0]))  # fmt: skip
    result = silent.score(["p"] * 3, ["a", "b", "c"])
    assert result.failures == {"n_a": 0} and np.isnan(result.matrix).all()
    # The bound: 1e9 is still a reward, anything beyond it is not; a composer may only lower it.
    edge = RewardComposer([Objective("e", lambda p, c, **_: [1e9, -1e9, 1.000001e9])], StaticWeights([1.0]))
    result = edge.score(["p"] * 3, ["a", "b", "c"])
    assert result.failures == {"e": 1} and result.matrix[:2, 0].tolist() == [1e9, -1e9]
    strict = RewardComposer([Objective("e", lambda p, c, **_: [5.0, 20.0])], StaticWeights([1.0]), max_abs=10)
    assert strict.score(["p"] * 2, ["a", "b"]).failures == {"e": 1}
    with pytest.raises(RewardConfigError, match="max_abs: must be a number in"):
        RewardComposer([Objective("e", mixed)], StaticWeights([1.0]), max_abs=1e300)
    # Weights are bounded too, so that no weighted sum of bounded rewards can overflow.
    with pytest.raises(RewardConfigError, match=r"weights: \[1e\+300\] must be finite and within \+-1e\+12"):
        RewardComposer([Objective("e", mixed)], StaticWeights([1e300]))


def test_hung_reward_thread_does_not_block_process_exit() -> None:
    script = (
        "from rewards.composer import Objective, RewardComposer\n"
        "from rewards.registry import build_component\n"
        "from rewards.weighting import StaticWeights\n"
        "c = RewardComposer([Objective('h', build_component('h', 'fault_components:hang_forever'))],"
        " StaticWeights([1.0]), timeout=0.1)\n"
        "print(c.score(['p'] * 3, ['a'] * 3).timeouts)\n"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=cli_env(), timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "{'h': 3}"
    assert time.perf_counter() - start < 30


def test_recipe_timeouts_are_validated_and_reach_the_composer(tmp_path: Path, tiny_model_dir: Path) -> None:
    objectives = """
- {name: a, component: length, args: {unit: words, mode: count}, timeout: 2.5}
- {name: b, component: length, args: {unit: words, mode: count}}
"""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=1, objectives=objectives)
    composer = build_composer(load_recipe(recipe))
    assert (composer.timeout_of(0), composer.timeout_of(1)) == (2.5, 300.0)
    assert build_composer(load_recipe(recipe, ["rewards.timeout=null"])).timeout_of(1) is None
    for override, message in [
        ("rewards.timeout=0", "rewards.timeout: must be a positive number of seconds, got 0.0"),
        ("rewards.objectives.0.timeout=-1", r"rewards.objectives\[0\].timeout: must be a positive number"),
        ("rewards.timeout=.inf", "rewards.timeout: expected a finite number"),
        ("rewards.objectives.1.timeout=soon", r"rewards.objectives\[1\].timeout: expected a number, got 'soon'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_recipe(recipe, [override])


# -- reward faults end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_faulty_reward_components_run_completes_with_rows_masked_and_counted(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """30% raising rows, NaN/inf values and a hanging component (0.5 s timeout) in one `align train` run: it
    finishes, and metrics.jsonl counts exactly the rows each fault hit. (That the hung threads do not keep the
    process alive is checked in a subprocess above.)"""
    flaky_log, bad_log, hang_log = (tmp_path / f"{name}.jsonl" for name in ("flaky", "bad", "hang"))
    objectives = f"""
- {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}
- {{name: flaky, component: "fault_components:flaky", args: {{log: {flaky_log}}}}}
- {{name: bad, component: "fault_components:bad_values", args: {{log: {bad_log}}}}}
- {{name: slow, component: "fault_components:hangs", args: {{log: {hang_log}}}, timeout: 0.5}}
"""
    steps = 3
    recipe = write_tiny_recipe(
        tmp_path, tiny_model_dir, max_steps=steps, save_steps=steps, objectives=objectives, num_generations=4
    )
    run = tmp_path / "run"
    start = time.perf_counter()
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 0
    elapsed = time.perf_counter() - start
    records = metrics_records(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))

    def total(key: str) -> int:
        return int(sum(r[key] for r in records))

    def events(path: Path, kind: str) -> int:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        return sum(json.loads(line)["event"] == kind for line in lines)

    rows = steps * 2 * 4
    assert 0 < total("rewards/flaky/failures") == events(flaky_log, "raise") < rows
    assert 0 < total("rewards/bad/failures") == events(bad_log, "non-finite") < rows
    assert 0 < total("rewards/slow/timeouts") == total("rewards/slow/failures") <= rows
    assert events(hang_log, "hang") >= steps, "every batch call hung"
    assert total("rewards/length/failures") == total("rewards/length/timeouts") == 0
    for record in records:
        assert math.isfinite(record["composite_reward"]) and math.isfinite(record["loss"])
    check_checkpoints(run)
    record_result(
        "reward_faults",
        {
            "rows": rows,
            "raised": total("rewards/flaky/failures"),
            "non_finite": total("rewards/bad/failures"),
            "timed_out": total("rewards/slow/timeouts"),
            "seconds": round(elapsed, 1),
        },
    )


@pytest.mark.slow
def test_poisoning_rewards_end_to_end(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`align train` with a component returning +-1e308 on about half the rows: the run completes, exactly those
    rows are counted as failures, composite and loss stay finite and the healthy objective still gives a
    gradient. With a component returning NaN on every row instead, the run stops at its first step with one
    line naming the objective (as the README says)."""
    huge_log = tmp_path / "huge.jsonl"
    objectives = f"""
- {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}
- {{name: huge, component: "fault_components:huge_values", args: {{log: {huge_log}}}}}
"""
    steps = 2
    recipe = write_tiny_recipe(
        tmp_path, tiny_model_dir, max_steps=steps, save_steps=steps, objectives=objectives, num_generations=4
    )
    run = tmp_path / "run"
    start = time.perf_counter()
    # No KL term: any gradient comes from the advantages, which the poisoned batches used to zero.
    assert main(["train", str(recipe), "--output-dir", str(run), "--set", "train.beta=0.0"]) == 0
    elapsed = time.perf_counter() - start
    records = metrics_records(run)
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    injected = sum(1 for line in huge_log.read_text().splitlines() if json.loads(line)["event"] == "huge")
    assert 0 < sum(r["rewards/huge/failures"] for r in records) == injected < steps * 8
    for record in records:
        assert math.isfinite(record["composite_reward"]) and math.isfinite(record["loss"])
        assert abs(record["composite_reward"]) < 100, "the composite is made of word counts and length scores"
    assert any(r["grad_norm"] > 0 for r in records), "the healthy objectives still train the policy"

    dead = tmp_path / "dead"
    dead.mkdir()
    objectives = """
- {name: length, component: length, args: {unit: words, mode: target, target: 4}}
- {name: dead, component: "fault_components:nan_everywhere"}
"""
    recipe = write_tiny_recipe(dead, tiny_model_dir, max_steps=2, objectives=objectives)
    capsys.readouterr()
    assert main(["train", str(recipe), "--output-dir", str(dead / "run")]) == 2
    error = error_line(capsys.readouterr().err)
    assert "reward objective 'dead' failed on all 4 rows: returned nan" in error, error
    assert metrics_records(dead / "run") == [] and complete_checkpoints(dead / "run") == []
    record_result("poisoning_rewards", {"huge_rows": injected, "rows": steps * 8, "seconds": round(elapsed, 1),
                                        "nan_everywhere_error": error})  # fmt: skip


@pytest.mark.slow
def test_an_error_mid_run_starts_on_a_line_of_its_own_after_the_progress_bar(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A reward that breaks at the second step of `align train` (or the second sampling call of `align sample`)
    stops the command while its progress bar is on the screen: the bar is closed first (the trainer's by the run
    frame, the sampling bar as its loop unwinds), so the error line is not glued to the bar's last
    carriage-return update."""
    objectives = """
- {name: length, component: length, args: {unit: words, mode: target, target: 4}}
- {name: breaks, component: "fault_components:nan_after_first_call"}
"""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=3, objectives=objectives)
    rewards = tmp_path / "rewards.yaml"
    rewards.write_text(f"objectives:\n{objectives}")
    prompts = tmp_path / "prompts.jsonl"
    commands = {
        "train": ["train", str(recipe), "--output-dir", str(tmp_path / "run")],
        "sample": ["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--reward", str(rewards),
                   "--n", "2", "--batch-size", "2", "--max-tokens", "4", "--out", str(tmp_path / "pairs.jsonl")],
    }  # fmt: skip
    for command, argv in commands.items():
        env = {**cli_env(), "PYTHONWARNINGS": "ignore"}  # warnings would end the bar's line and hide the problem
        proc = subprocess.run(
            [sys.executable, "-m", "alignment.cli", *argv], capture_output=True, env=env, timeout=300, cwd=REPO
        )
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
        at = stderr.index(f"align {command}: error: reward objective 'breaks' failed on all")
        assert "%|" in stderr[:at], f"{command}: no progress bar was shown before the error"
        assert stderr[at - 1] == "\n", f"{command}: the error shares the progress bar's line: {stderr[at - 200 : at]!r}"


def test_hangs_helper_answers_single_rows_outside_its_bucket() -> None:
    rows = _hang_bucket_rows()
    assert hangs(["p"], [rows[0]]) == [2.0]


# -- disk full ---------------------------------------------------------------------------------------------------


def test_metrics_and_file_writes_report_a_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = MetricsWriter(tmp_path / "metrics.jsonl")
    writer.write({"step": 1, "loss": 0.5})
    atomic_write_text(tmp_path / "config.yaml", "a: 1\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("alignment.io.os.fsync", full)
    with pytest.raises(StorageError, match=r"metrics.jsonl: cannot append step 2 \(\[Errno 28\] No space left"):
        writer.write({"step": 2, "loss": 0.25})
    with pytest.raises(StorageError, match=r"config.yaml: cannot be written \(\[Errno 28\] No space left"):
        atomic_write_text(tmp_path / "config.yaml", "a: 2\n")
    monkeypatch.undo()
    assert [r["step"] for r in writer.read()] == [1], "the torn line was cut off again"
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics.jsonl"], "no temp files left"


def test_checkpoint_markers_must_list_existing_files(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "adapter.safetensors").write_bytes(b"x")
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": 3, "files": ["adapter.safetensors"]}))
    assert is_complete(folder) and complete_checkpoints(tmp_path) == [folder]
    (folder / "adapter.safetensors").unlink()
    assert not is_complete(folder), "a checkpoint missing a listed file is not complete"
    (folder / COMPLETE_MARKER).write_text("{torn")
    assert not is_complete(folder)
    (folder / COMPLETE_MARKER).write_text("{}")
    remove_checkpoint(folder)
    assert not folder.exists()


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC injected into torch.save while checkpoint-2 is staged: one-line error (exit 2), checkpoint-1
    intact, the torn staging folder removed; after that, --resume finishes the run with no step lost."""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=3, save_steps=1)
    run = tmp_path / "run"
    real_save = torch.save

    def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 2
    error = error_line(capsys.readouterr().err)
    assert "checkpoint-2" in error and "[Errno 28] No space left on device" in error, error
    assert "checkpoint-1 is intact" in error
    assert [c.name for c in check_checkpoints(run)] == ["checkpoint-1"]
    assert not (run / ".staging" / "checkpoint-2").exists()
    monkeypatch.undo()
    assert main(["train", str(recipe), "--output-dir", str(run), "--resume"]) == 0
    assert [r["step"] for r in metrics_records(run)] == [1, 2, 3]
    assert [c.name for c in check_checkpoints(run)] == ["checkpoint-2", "checkpoint-3"]


def error_line(stderr: str) -> str:
    """The CLI's error from a run's stderr, checked to be a single line with no traceback anywhere.

    (The progress bar may share the terminal line: it ends in a carriage return, not a newline.)
    """
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "align train: error: " in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0][lines[0].index("align train: error: ") :]


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || exit 1"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.mark.slow
def test_disk_full_on_a_real_tmpfs(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The run folder lives on a 4 MiB tmpfs (in a private mount namespace) that a helper fills with `dd` once
    checkpoint-1 is complete (a gate component holds step 2 until then). The run stops with one line naming
    the checkpoint and ENOSPC; checkpoint-1 is intact and nothing torn is left. (Resuming after the disk is
    freed is the injected test's second half.)"""
    if not _can_mount_tmpfs():
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    mount = tmp_path / "small"
    mount.mkdir()
    gate = tmp_path / "gate"
    objectives = f"""
- {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}
- {{name: gate, component: "fault_components:gate", weight: 0.0, args: {{gate_path: {gate}, block_on_call: 2}}}}
"""
    recipe = write_tiny_recipe(tmp_path, tiny_model_dir, max_steps=3, save_steps=1, objectives=objectives)
    run = mount / "run"
    script = f"""
set -u
mount -t tmpfs -o size=4m tmpfs {mount}
{sys.executable} -m alignment.cli train {recipe} --output-dir {run} 2> {tmp_path}/stderr.txt &
pid=$!
i=0
while [ ! -f {run}/checkpoint-1/COMPLETE ] && [ $i -lt 9000 ]; do sleep 0.02; i=$((i+1)); done
dd if=/dev/zero of={mount}/filler bs=64k > /dev/null 2>&1
df -k {mount} | tail -1 > {tmp_path}/df.txt
touch {gate}
wait $pid
echo "exit=$?"
cp -r {run} {tmp_path}/after_fault
"""
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=cli_env(), timeout=300
    )
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "exit=2" in proc.stdout, proc.stdout + stderr[-3000:]
    error = error_line(stderr)
    assert "No space left on device" in error and "checkpoint-1 is intact" in error, error
    after = tmp_path / "after_fault"
    assert [c.name for c in check_checkpoints(after)] == ["checkpoint-1"], "checkpoint-1 intact, nothing torn"
    assert not (after / ".staging" / "checkpoint-2").exists(), "the torn checkpoint was removed"
    assert [r["step"] for r in metrics_records(after)] in ([1], [1, 2])
    record_result("disk_full_tmpfs", {"error": error, "df_after_fill": (tmp_path / "df.txt").read_text().strip()})
