"""Each weighting strategy proves its defining effect end to end on the quickstart task (configs/quickstart.yaml:
the tiny policy with LoRA, R^3 query relevance from MiniLM and a target-length objective), shortened for CPU.

Spies (the real methods run; their inputs are recorded) on `RewardComposer.compose` and on TRL's
`_compute_loss` tie what the strategy decided to what the loss received.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alignment.cli import main
from alignment.learners.grpo import ComposedGRPOTrainer
from alignment.recipes.recipe import load_recipe
from rewards.composer import RewardComposer
from rewards.normalization import group_advantages, weighted_sum
from rewards.weighting import meta_factor

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def train_quickstart(run: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """The quickstart recipe with `--set` overrides; the run's metrics.jsonl records."""
    args = ["train", str(QUICKSTART), "--output-dir", str(run)]
    for override in ["train.save_steps=1000", "train.report_to=[none]", *overrides]:
        args += ["--set", override]
    assert main(args) == 0
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Spies:
    """Records each composition (matrix, strategy state used) and the advantages each loss call received."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.compositions: list[dict[str, Any]] = []
        self.losses: list[np.ndarray] = []
        compose, compute_loss = RewardComposer.compose, ComposedGRPOTrainer._compute_loss
        spies = self

        def spy_compose(composer: RewardComposer, matrix: np.ndarray, group_size: int) -> Any:
            scale = getattr(composer.weighting, "advantage_scale", lambda: 1.0)()
            result = compose(composer, matrix, group_size)
            spies.compositions.append({"matrix": matrix.copy(), "scale": scale, "result": result})
            return result

        def spy_loss(trainer: ComposedGRPOTrainer, model: Any, inputs: dict[str, Any]) -> Any:
            spies.losses.append(inputs["advantages"].detach().double().cpu().numpy().copy())
            return compute_loss(trainer, model, inputs)

        monkeypatch.setattr(RewardComposer, "compose", spy_compose)
        monkeypatch.setattr(ComposedGRPOTrainer, "_compute_loss", spy_loss)


@pytest.mark.slow
def test_hypervolume_meta_factor_from_held_out_passes_scales_the_loss_advantages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lu et al.: a validation pass before training and after each update; m = 0.5 + 1.5 tanh(HVC) multiplies
    the next step. The advantages TRL's loss receives are m x the composite's group-normalised advantages."""
    spies = Spies(monkeypatch)
    steps = 5
    records = train_quickstart(
        tmp_path / "hv",
        [
            f"train.max_steps={steps}",
            "train.prompts_per_step=2",
            "train.num_generations=4",
            "rollout.max_new_tokens=16",
            "rewards.weighting.strategy=hypervolume",
            "rewards.weighting.options={source: eval, scales: [1.0, 1.0]}",
            "data.eval=builtin:quickstart_eval_prompts.jsonl",
            "rewards.weighting.eval.max_prompts=8",
        ],
    )
    assert len(spies.compositions) == len(spies.losses) == steps
    weights = np.array([o.weight for o in load_recipe(QUICKSTART).rewards.objectives])  # relevance, length
    factors = [c["scale"] for c in spies.compositions]
    for record, composition, received in zip(records, spies.compositions, spies.losses):
        # held-out points (the policy before this step) reached the strategy, not the batch means
        assert {"heldout/relevance", "heldout/length"} <= set(record)
        plain = group_advantages(weighted_sum(composition["matrix"], weights), 4)
        # TRL shuffles the batch's rows before the loss: compare as sorted values (float32 in the loss)
        np.testing.assert_allclose(np.sort(received), np.sort(composition["scale"] * plain), atol=2e-5)
        assert record["weighting/hv/meta_factor"] == pytest.approx(composition["scale"])
    assert factors[0] == 1.0, "nothing to compare before the first update"
    moved = [m for m in factors[1:] if abs(m - 1.0) > 0.05]
    assert moved, f"the meta factor never moved: {factors}"
    for m, composition, received in zip(factors, spies.compositions, spies.losses):
        plain = group_advantages(weighted_sum(composition["matrix"], weights), 4)
        if abs(m - 1.0) > 0.05 and np.abs(plain).max() > 0.1:  # the scale is visible in what the loss got
            assert not np.allclose(np.sort(received), np.sort(plain), atol=1e-3)
    # m follows the held-out points: recompute HVC from the logged points (reference p0 = the first pass)
    points = np.array([[r["heldout/relevance"], r["heldout/length"]] for r in records])
    buffer = [points[0]]
    for t in range(1, steps):
        p, ref = points[t], points[0]
        hv_before = _hv2(np.array(buffer), ref)
        hvc = _hv2(np.array([*buffer, p]), ref) - hv_before
        assert factors[t] == pytest.approx(meta_factor(hvc), abs=1e-9)
        if hvc > 0:
            buffer.append(p)


def _hv2(points: np.ndarray, ref: np.ndarray) -> float:
    """2-D hypervolume (maximisation) of `points` above `ref`, by sweeping the first objective downward."""
    kept = points[(points > ref).all(axis=1)]
    volume, best_y = 0.0, ref[1]
    for x, y in sorted(kept.tolist(), reverse=True):
        if y > best_y:
            volume += (x - ref[0]) * (y - best_y)
            best_y = y
    return volume


@pytest.mark.slow
def test_gradient_weighting_moves_weight_toward_objectives_whose_gradients_help_the_others(tmp_path: Path) -> None:
    """Lu et al.: I_k = sum_j <g_k, g_j> over real per-objective policy gradients; mirror descent moves weight
    to objectives aligned with the others. Beside the quickstart's relevance and length (target 30 words),
    `words` (the word count: longer is better, like length below 30 words) helps length, and `brevity` (target
    8 words, shorter than the answers) fights both: it must lose weight, they must gain it."""
    objectives = (
        "[{name: relevance, component: r3.qr}, "
        "{name: length, component: length, args: {unit: words, mode: target, target: 30}}, "
        "{name: words, component: length, args: {unit: words, mode: count}}, "
        "{name: brevity, component: length, args: {unit: words, mode: target, target: 8}}]"
    )
    eta = 20.0
    records = train_quickstart(
        tmp_path / "gradient",
        [
            "train.max_steps=6",
            "train.prompts_per_step=2",
            "train.num_generations=4",
            "rollout.max_new_tokens=16",
            f"rewards.objectives={objectives}",
            "rewards.weighting.strategy=gradient",
            f"rewards.weighting.options={{eta: {eta}}}",
        ],
    )
    names = ["relevance", "length", "words", "brevity"]
    weights = np.array([[r["weights"][n] for n in names] for r in records])
    cosine = {
        pair: np.mean([r[f"weighting/gradient/cosine/{pair}"] for r in records])
        for pair in ("length/words", "length/brevity", "words/brevity")
    }
    assert cosine["length/words"] > 0.5, cosine  # both reward longer answers below 30 words
    assert cosine["length/brevity"] < -0.5 and cosine["words/brevity"] < -0.5, cosine
    # the weights logged at a step are the ones composed from that step's own gradients (the authors' order):
    # w_t = softmax(log w_{t-1} + eta * I_t), eta constant under the quickstart's constant learning rate
    previous = np.full(4, 0.25)
    for record, w in zip(records, weights):
        influence = np.array([record[f"weighting/gradient/influence/{n}"] for n in names])
        expected = previous * np.exp(eta * (influence - influence.max()))
        np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-5)
        assert record["weighting/gradient/eta"] == pytest.approx(eta)
        previous = w
    assert weights[-1, 3] < 0.15 and weights[-1, 3] == weights[-1].min(), weights[-1]
    assert weights[-1, 1] > 0.25 and weights[-1, 2] > 0.25, weights[-1]
    # TRL's `reward` metric is the composite the loss used (the moving weights), not the static weights' sum
    for record in records:
        means = np.array([record["objectives"][n] for n in names])
        assert record["reward"] == pytest.approx(record["composite_reward"], abs=1e-6)
        weights_now = np.array([record["weights"][n] for n in names])  # the JSON keys are sorted: index by name
        assert record["reward"] == pytest.approx(float(weights_now @ means), abs=1e-5)
    static = [float(np.ones(4) @ np.array([r["objectives"][n] for n in names])) for r in records]
    assert any(abs(r["reward"] - s) > 0.1 for r, s in zip(records, static))


@pytest.mark.slow
def test_lagrangian_holds_an_equality_constrained_objective_at_its_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Moskovitz et al. (their dialog setup): maximise -KL subject to J = theta (tanh multiplier, KL-only base, the
    KL as a strong beta term), here J = the answers' mean word count on the quickstart prompts, theta 18.5 words.
    The policy starts well below (16 words); the multiplier rises and pushes the length up, and the run ends with
    the batch means of its last 8 steps (256 completions) within 5% of theta (measured here: 18.09 words, 2.2%
    off). With zero multiplier the loss has no advantage and the policy stays at the reference (16 words); with
    the multiplier near 1 at the quickstart's beta 0.04 the length ran to the 24-token cap (21.7 words)."""
    spies = Spies(monkeypatch)
    steps, theta = 20, 18.5
    records = train_quickstart(
        tmp_path / "lagrangian",
        [
            f"train.max_steps={steps}",
            "train.prompts_per_step=4",
            "train.num_generations=8",
            "train.beta=1.0",
            "train.learning_rate=3.0e-3",
            "rollout.max_new_tokens=24",
            "rewards.objectives=[{name: words, component: length, args: {unit: words, mode: count}}]",
            "rewards.weighting.strategy=lagrangian",
            "rewards.weighting.options={base: null, lr: 0.3, "
            f"constraints: [{{objective: words, threshold: {theta}, direction: equal}}]}}",
        ],
    )
    assert len(records) == len(spies.compositions) == len(spies.losses) == steps
    words = np.array([r["rewards/words/mean"] for r in records])
    multipliers = np.array([r["weighting/lagrange/multiplier/words"] for r in records])
    # the loss received s * (the word count's group-normalised advantages): the KL-only base adds nothing
    for s, composition, received in zip(multipliers, spies.compositions, spies.losses):
        expected = s * group_advantages(composition["matrix"][:, 0], 8)
        np.testing.assert_allclose(np.sort(received), np.sort(expected), atol=2e-5)
    assert words[0] < 0.95 * theta, f"the run must start outside the band to show the multiplier moves it: {words}"
    assert multipliers.max() > 0.3, f"the multiplier never pushed the length up: {multipliers}"
    final = float(words[-8:].mean())
    assert abs(final - theta) <= 0.05 * theta, f"last 8 steps' mean {final:.2f} words vs threshold {theta}: {words}"


def run_tiny(tmp_path: Path, model_dir: Path, weighting: str, extra: str = "") -> list[dict]:
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
def test_length_condition_masks_are_counted(tmp_path: Path, tiny_model_dir: Path) -> None:
    records = run_tiny(tmp_path, tiny_model_dir, "{strategy: static}", ", length_condition: {tau_l: 5.0, tau_u: 6.0}")
    assert all(r["rewards/chars/masked"] == 8 for r in records), "every answer is outside [5, 6] x 6 words"
    assert all(r["objectives"]["chars"] == 0.0 for r in records)
