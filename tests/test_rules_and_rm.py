"""Rule components, the reward-model component and building components from names and import paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rewards.errors import RewardConfigError
from rewards.registry import FunctionComponent, build_component
from rewards.rules import ExactMatchReward, FormatReward, RepetitionReward, distinct_ngram_ratio, normalize_answer


def my_reward(prompts, completions, bonus: float = 0.0, **kwargs):
    """A user reward function in TRL's signature (imported by path in the test below)."""
    return [len(c) + bonus for c in completions]


def test_format_reward() -> None:
    reward = FormatReward(r"<answer>.*</answer>", flags="s")
    assert reward(["p", "p"], ["x <answer>4</answer>", "no tags"]) == [1.0, 0.0]
    assert FormatReward(r"\d+", full=True)(["p", "p"], ["42", "42 apples"]) == [1.0, 0.0]
    with pytest.raises(RewardConfigError, match="not a valid regular expression"):
        FormatReward("(")
    with pytest.raises(RewardConfigError, match="unknown flags"):
        FormatReward("x", flags="q")


def test_exact_match_reward() -> None:
    reward = ExactMatchReward(extract=r"answer is (.+)")
    out = reward(
        ["p"] * 4,
        ["The answer is The Nile.", "answer is nile", "I do not know", "answer is 3"],
        answer=["nile", "Nile", "nile", ""],
    )
    assert out == [1.0, 1.0, 0.0, None]
    assert normalize_answer("The  Nile!") == "nile"
    with pytest.raises(RewardConfigError, match="no 'answer' column"):
        reward(["p"], ["x"])
    with pytest.raises(RewardConfigError, match="capturing group"):
        ExactMatchReward(extract="answer")


def test_repetition_reward() -> None:
    assert distinct_ngram_ratio("a b c a b c", 3) == pytest.approx(3 / 4)
    assert distinct_ngram_ratio("too short", 3) == 1.0
    assert RepetitionReward(n=1)(["p"], ["x x x y"]) == [0.5]


def test_reward_model_component_matches_a_direct_forward(tiny_reward_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    component = build_component("rm", "reward_model", {"path": str(tiny_reward_model_dir), "batch_size": 2})
    prompts = ["Question: Bread?\nAnswer:", "Question: Bees?\nAnswer:", "Question: Rivers?\nAnswer:"]
    completions = [" Bread is baked.", " Bees make honey and pollinate flowers.", " Water."]
    scores = component(prompts, completions)
    tok = AutoTokenizer.from_pretrained(str(tiny_reward_model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_reward_model_dir)).eval()
    for prompt, completion, score in zip(prompts, completions, scores):
        with torch.no_grad():
            expected = model(**tok(prompt + completion, return_tensors="pt")).logits[0, 0].item()
        assert score == pytest.approx(expected, abs=1e-5)


def test_reward_model_bad_path(tmp_path: Path) -> None:
    with pytest.raises(RewardConfigError, match="no config.json"):
        build_component("rm", "reward_model", {"path": str(tmp_path)})


def test_build_component_from_import_path() -> None:
    component = build_component("mine", "test_rules_and_rm:my_reward", {"bonus": 1.0})
    assert isinstance(component, FunctionComponent) and component.name == "mine"
    assert component(["p", "p"], ["ab", "abcd"]) == [3.0, 5.0]
    with pytest.raises(RewardConfigError, match="has no callable 'nope'"):
        build_component("x", "test_rules_and_rm:nope")
    with pytest.raises(RewardConfigError, match="unknown reward component 'os.system'"):
        build_component("x", "os.system")
