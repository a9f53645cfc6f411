"""End to end on tiny models: a run folder with everything in it, resume, and the shortened quickstart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignment.cli import main
from alignment.learners.checkpointing import COMPLETE_MARKER, complete_checkpoints

REPO = Path(__file__).resolve().parent.parent


def smoke_recipe(tmp_path: Path, model_dir: Path, steps: int, save_steps: int) -> Path:
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question: Tell me about {t}.\nAnswer:", "topic": t} for t in ("bread", "rivers", "bees")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "smoke.yaml"
    path.write_text(
        f"""
algorithm: grpo
seed: 7
model: {{path: {model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 8}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: words, mode: target, target: 4}}}}
    - {{name: chars, component: length, weight: 0.01, args: {{unit: chars, mode: count}}}}
train:
  max_steps: {steps}
  prompts_per_step: 2
  num_generations: 4
  save_steps: {save_steps}
  save_total_limit: 3
  learning_rate: 1.0e-3
  beta: 0.04
  report_to: [tensorboard]
  torch_threads: 2
"""
    )
    return path


def adapter(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "adapter_model.safetensors"))


@pytest.mark.slow
def test_run_folder_contents_and_exact_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = smoke_recipe(tmp_path, tiny_model_dir, steps=4, save_steps=2)
    full, split = tmp_path / "full", tmp_path / "split"
    assert main(["train", str(recipe), "--output-dir", str(full)]) == 0

    assert (full / "config.yaml").is_file()
    assert list((full / "tensorboard").rglob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert set(record["objectives"]) == {"length", "chars"}
        assert record["weights"] == {"length": 1.0, "chars": 0.01}
        for key in ("composite_reward", "loss", "step_time", "kl", "learning_rate"):
            assert isinstance(record[key], float), key
    checkpoints = complete_checkpoints(full)
    assert [c.name for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    final = checkpoints[-1]
    marker = json.loads((final / COMPLETE_MARKER).read_text())
    assert marker["step"] == 4 and "adapter_model.safetensors" in marker["files"]
    assert json.loads((final / "composer_state.json").read_text())["composer"]["objectives"] == ["length", "chars"]
    assert not (full / ".staging").exists()

    # Stop after step 2, resume to step 4: same adapter as the uninterrupted run, no duplicated metrics.
    assert main(["train", str(recipe), "--output-dir", str(split), "--set", "train.max_steps=2"]) == 0
    assert main(["train", str(recipe), "--output-dir", str(split), "--resume"]) == 0
    resumed = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert resumed == [1, 2, 3, 4]
    a, b = adapter(final), adapter(complete_checkpoints(split)[-1])
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    assert any(not torch.equal(a[k], adapter(checkpoints[0])[k]) for k in a), "training did not move the adapter"
