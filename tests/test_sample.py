"""On-policy preference pairs: pair building by hand, `sample_pairs` with a scripted engine and a composer of
two objectives, and `align sample` end to end on the tiny model (rows in TRL's preference format)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from alignment.cli import main
from alignment.learners.onpolicy_pairs import build_pair_rows, sample_pairs
from rewards.composer import Objective, RewardComposer
from rewards.weighting import StaticWeights
from rollout.base import Sample, SamplingParams

NAMES = ["a", "b"]


def test_best_worst_pairs_skip_ties_and_unscored() -> None:
    completions = ["w", "x", "y", "z"]
    scores = np.array([[0.1, 0.0], [0.9, 1.0], [0.5, np.nan], [np.nan, np.nan]])
    composite = np.array([0.1, 1.9, 0.5, np.nan])
    rows, skipped = build_pair_rows("p", completions, composite, scores, NAMES, "best-worst", prompt_index=7)
    assert rows == [
        {
            "prompt": "p",
            "chosen": "x",
            "rejected": "w",
            "score_chosen": 1.9,
            "score_rejected": 0.1,
            "scores_chosen": {"a": 0.9, "b": 1.0},
            "scores_rejected": {"a": 0.1, "b": 0.0},
            "prompt_index": 7,
        }
    ]
    assert skipped == {"unscored": 1}
    tied, skipped = build_pair_rows("p", ["x", "y"], np.array([1.0, 1.0]), np.zeros((2, 2)), NAMES)
    assert tied == [] and skipped["ties"] == 1
    same, skipped = build_pair_rows("p", ["x", "x"], np.array([2.0, 1.0]), np.zeros((2, 2)), NAMES)
    assert same == [] and skipped["identical"] == 1
    lonely, skipped = build_pair_rows("p", ["x", "y"], np.array([2.0, np.nan]), np.zeros((2, 2)), NAMES)
    assert lonely == [] and skipped["unscored"] == 1
    # An empty completion takes part in no pair (TRL-format readers drop empty answers): the worst non-empty does.
    rows, skipped = build_pair_rows("p", ["x", " ", "y"], np.array([2.0, 0.0, 1.0]), np.zeros((3, 2)), NAMES)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("x", "y")] and skipped["empty"] == 1


def test_all_pairs_take_every_ordered_difference() -> None:
    composite = np.array([3.0, 1.0, 2.0, 1.0])
    rows, skipped = build_pair_rows("p", ["a", "b", "c", "d"], composite, np.zeros((4, 2)), NAMES, "all")
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [
        ("a", "b"),
        ("a", "c"),
        ("a", "d"),
        ("c", "b"),
        ("c", "d"),
    ]
    assert skipped["ties"] == 1  # b vs d
    assert all(r["score_chosen"] > r["score_rejected"] for r in rows)


class ScriptedEngine:
    """Returns completions 'w', 'ww', ... (i + 1 words) for sample i of every prompt."""

    name = "scripted"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def generate(self, prompts: Sequence, params: SamplingParams) -> list[list[Sample]]:
        self.calls.append((len(prompts), params.seed))
        return [
            [Sample(" ".join(["w"] * (i + 1)), [1], [2] * (i + 1), [-0.5] * (i + 1), "stop") for i in range(params.n)]
            for _ in prompts
        ]


def words(prompts, completions, **kwargs) -> list[float]:
    return [float(len((c if isinstance(c, str) else c[0]["content"]).split())) for c in completions]


def offset(prompts, completions, bonus, **kwargs) -> list[float | None]:
    return [None if b is None else float(b) for b in bonus]


def test_sample_pairs_scores_every_objective_and_pairs_by_the_composite() -> None:
    composer = RewardComposer(
        [Objective("words", words), Objective("bonus", offset)], StaticWeights([-1.0, 2.0]), "none"
    )
    engine = ScriptedEngine()
    prompts = ["p0", "p1", "p2"]
    samples, rows, stats = sample_pairs(
        engine,
        None,
        prompts,
        composer,
        3,
        SamplingParams(seed=10),
        columns={"bonus": [1.0, 0.0, None]},
        prompts_per_call=2,
        progress=False,
    )
    assert engine.calls == [(2, 10), (1, 11)]  # chunks with seed + call index
    assert len(samples) == 9
    first = samples[0]
    assert first["prompt"] == "p0" and first["completion"] == "w" and first["scores"] == {"words": 1.0, "bonus": 1.0}
    assert first["composite"] == pytest.approx(-1.0 + 2.0)
    assert samples[8]["scores"] == {"words": 3.0, "bonus": None}  # not applicable stays null
    # Fewer words is better (weight -1): chosen is the shortest, rejected the longest, for every prompt.
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("p0", "w", "w w w"),
        ("p1", "w", "w w w"),
        ("p2", "w", "w w w"),
    ]
    assert rows[2]["scores_chosen"] == {"words": 1.0, "bonus": None}
    assert stats["pairs"] == 3 and stats["samples"] == 9 and stats["completion_tokens"] == 18
    assert stats["mean_scores"]["words"] == pytest.approx(2.0) and stats["weights"] == {"words": -1.0, "bonus": 2.0}
    columns = {"bonus": [1.0, 0.0, None]}
    _, all_rows, all_stats = sample_pairs(
        engine, None, prompts, composer, 3, SamplingParams(), "all", columns=columns, progress=False
    )
    assert len(all_rows) == 9 and all_stats["pair_mode"] == "all"


def test_chat_prompts_give_conversational_rows(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    composer = RewardComposer([Objective("words", words)], StaticWeights([1.0]))
    prompt = [{"role": "user", "content": "What is a volcano?"}]
    samples, rows, _ = sample_pairs(
        model, tokenizer, [prompt], composer, 4, SamplingParams(max_tokens=8, seed=0), progress=False
    )
    assert samples[0]["completion"][0]["role"] == "assistant"
    for row in rows:
        assert row["prompt"] == prompt and row["chosen"][0]["role"] == "assistant"


REWARDS_YAML = """
rewards:
  objectives:
    - {name: length, component: length, weight: 1.0, args: {unit: words, mode: target, target: 4}}
    - {name: repetition, component: repetition, weight: 0.5}
"""


@pytest.fixture(scope="module")
def sampled(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    prompts = folder / "prompts.jsonl"
    topics = ("bread", "rivers", "bees", "volcanoes")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    (folder / "rewards.yaml").write_text(REWARDS_YAML)
    argv = ["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "4", "--max-tokens", "10"]
    argv += ["--reward", str(folder / "rewards.yaml"), "--out", str(folder / "pairs.jsonl"), "--threads", "2"]
    assert main(argv) == 0
    return folder


def test_align_sample_writes_samples_pairs_and_stats(sampled: Path) -> None:
    from alignment.reports.reward_eval import load_preference_pairs

    samples = [json.loads(line) for line in (sampled / "pairs.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16
    for sample in samples:
        assert set(sample["scores"]) == {"length", "repetition"}
        assert sample["composite"] == pytest.approx(sample["scores"]["length"] + 0.5 * sample["scores"]["repetition"])
    rows = load_preference_pairs(sampled / "pairs.jsonl")  # TRL's preference format, checked row by row
    stats = json.loads((sampled / "pairs.stats.json").read_text())
    assert len(rows) == stats["pairs"] >= 1 and stats["samples"] == 16
    assert stats["pairs"] + stats["prompts_without_pair"] == 4
    for row in rows:
        group = [s for s in samples if s["prompt_index"] == row["prompt_index"]]
        composites = [s["composite"] for s in group]
        assert row["score_chosen"] == max(composites) > row["score_rejected"] == min(composites)
        assert row["chosen"] in [s["completion"] for s in group]
        assert set(row["scores_chosen"]) == {"length", "repetition"}


def test_align_sample_all_pairs_and_bad_input(sampled: Path, tiny_model_dir: Path, capsys) -> None:
    base = ["sample", "--model", str(tiny_model_dir), "--prompts", str(sampled / "prompts.jsonl")]
    base += ["--reward", str(sampled / "rewards.yaml"), "--max-tokens", "6", "--threads", "2"]
    out = sampled / "all.jsonl"
    assert main([*base, "--n", "3", "--pairs", "all", "--out", str(out), "--seed", "1"]) == 0
    stats = json.loads((sampled / "all.stats.json").read_text())
    assert stats["pair_mode"] == "all"
    assert stats["pairs"] + stats["skipped"]["ties"] + stats["skipped"]["identical"] == 4 * 3
    capsys.readouterr()
    for extra, message in [
        (["--n", "1"], "--n: pairs need at least 2 completions per prompt"),
        (["--max-prompt-tokens", "3", "--prompt-truncation", "error"], "prompts are longer than 3 tokens"),
        (["--temperature", "0"], "--temperature: must be > 0"),
    ]:
        assert main([*base, *extra, "--out", str(sampled / "bad.jsonl")]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()  # progress bars, then the one error line
        assert err[-1].startswith("align sample: error: ") and message in err[-1], err
    missing = ["sample", "--model", str(sampled / "nope"), "--prompts", str(sampled / "prompts.jsonl")]
    assert main([*missing, "--reward", "repetition", "--out", str(out)]) == 2
    assert "--model" in capsys.readouterr().err
    assert not (sampled / "bad.jsonl").exists()
    assert math.isfinite(stats["tokens_per_second"])
