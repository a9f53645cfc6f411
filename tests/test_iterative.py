"""Iterative on-policy preference training: sample -> pairs -> DPO -> the next round samples the new adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alignment.cli import main
from alignment.learners.iterative import ROUND_MARKER


def recipe(tmp_path: Path, model_dir: Path, rounds: int) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    topics = ("bread", "rivers", "bees", "snow")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    path = tmp_path / "iterative.yaml"
    path.write_text(
        f"""
algorithm: dpo
seed: 5
model: {{path: {model_dir}}}
rollout: {{max_new_tokens: 12, temperature: 1.2}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: chars, mode: target, target: 30}}}}
iterative: {{rounds: {rounds}, prompts: {prompts}, n: 4, steps_per_round: 2}}
preference: {{beta: 0.2, max_length: 64}}
train: {{pairs_per_step: 2, save_steps: 2, learning_rate: 1.0e-3, report_to: [none], torch_threads: 1}}
"""
    )
    return path


@pytest.mark.slow
def test_rounds_sample_train_and_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(recipe(tmp_path, tiny_model_dir, 1)), "--output-dir", str(run)]) == 0
    first_samples = (run / "round-1" / "samples.jsonl").read_text()
    # Resume with one more round: round 1 is kept as it was, round 2 samples from round 1's adapter.
    assert main(["train", str(recipe(tmp_path, tiny_model_dir, 2)), "--output-dir", str(run), "--resume"]) == 0
    assert (run / "round-1" / "samples.jsonl").read_text() == first_samples
    for r in (1, 2):
        round_dir = run / f"round-{r}"
        samples = [json.loads(line) for line in (round_dir / "samples.jsonl").read_text().splitlines()]
        pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
        assert len(samples) == 16 and all("length" in s["scores"] for s in samples)
        assert pairs and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
        assert (round_dir / ROUND_MARKER).is_file()
        assert (round_dir / "train" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    marker = json.loads((run / "round-2" / ROUND_MARKER).read_text())
    assert marker["adapter"] == str(run / "round-2" / "train" / "checkpoint-2")
    # Round 2 continued round 1's adapter: its training config names it, and its weights moved on from it.
    round2_config = (run / "round-2" / "train" / "config.yaml").read_text()
    assert str(run / "round-1" / "train" / "checkpoint-2") in round2_config
    a = load_file(str(run / "round-1" / "train" / "checkpoint-2" / "adapter_model.safetensors"))
    b = load_file(str(run / "round-2" / "train" / "checkpoint-2" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not a[k].equal(b[k]) for k in a)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["pairs"] > 0 and r["objectives"]["length"] is not None and "loss" in r["train"] for r in records)


def test_iterative_needs_prompts_and_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: dpo\niterative: {rounds: 2}\n")
    assert main(["train", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert "iterative.prompts: iterative rounds need a prompt file" in capsys.readouterr().err
