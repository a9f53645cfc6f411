"""Each weighting strategy wired through the GRPO learner on a tiny model: weights and metrics logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignment.cli import main


def run(tmp_path: Path, model_dir: Path, weighting: str, extra: str = "") -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question: Tell me about {t}.\nAnswer:", "reference": "a b c d e f"} for t in ("bread", "bees")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "w.yaml"
    recipe.write_text(
        f"""
seed: 3
model: {{path: {model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 8}}
rewards:
  weighting: {weighting}
  objectives:
    - {{name: words, component: length, args: {{unit: words, mode: target, target: 4}}}}
    - {{name: chars, component: length, args: {{unit: chars, mode: target, target: 12}}{extra}}}
train: {{max_steps: 3, prompts_per_step: 2, num_generations: 4, save_steps: 3, report_to: [none],
         learning_rate: 1.0e-2, torch_threads: 2}}
"""
    )
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(out)]) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_gradient_weighting_moves_weights_from_real_gradients(tmp_path: Path, tiny_model_dir: Path) -> None:
    records = run(tmp_path, tiny_model_dir, "{strategy: gradient, options: {eta: 50.0}}")
    weights = [r["weights"] for r in records]
    assert weights[0] == {"words": 0.5, "chars": 0.5}
    assert weights[-1] != weights[0], "mirror descent on the Gram matrix of real gradients moved the weights"
    assert all(abs(sum(w.values()) - 1) < 1e-9 for w in weights)


@pytest.mark.slow
def test_lagrangian_and_hypervolume_log_their_state(tmp_path: Path, tiny_model_dir: Path) -> None:
    lagrangian = run(
        tmp_path / "lag",
        tiny_model_dir,
        "{strategy: lagrangian, options: {base: words, constraints: [{objective: chars, threshold: 0.9}], lr: 1.0}}",
    )
    assert any(key.startswith("weighting/") for key in lagrangian[-1])
    assert lagrangian[-1]["weights"]["chars"] != lagrangian[0]["weights"]["chars"]
    hv = run(tmp_path / "hv", tiny_model_dir, "{strategy: hypervolume}")
    assert [r["step"] for r in hv] == [1, 2, 3]


@pytest.mark.slow
def test_length_condition_masks_are_counted(tmp_path: Path, tiny_model_dir: Path) -> None:
    records = run(tmp_path, tiny_model_dir, "{strategy: static}", ", length_condition: {tau_l: 5.0, tau_u: 6.0}")
    assert all(r["rewards/chars/masked"] == 8 for r in records), "every answer is outside [5, 6] x 6 words"
    assert all(r["objectives"]["chars"] == 0.0 for r in records)
