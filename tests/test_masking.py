"""Length-conditional masking (BalCapRL, arXiv 2605.07394): by hand, options, errors, and inside the composer."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.composer import Objective, RewardComposer
from rewards.errors import RewardConfigError
from rewards.masking import LengthCondition, apply_length_masks, text_lengths
from rewards.weighting import StaticWeights


class Ones:
    def __init__(self, name: str, values: list[float] | None = None) -> None:
        self.name, self.values = name, values

    def __call__(self, prompts, completions, **columns):
        return list(self.values) if self.values is not None else [1.0] * len(completions)


def words(n: int) -> str:
    return " ".join(["w"] * n)


REFS = [words(10)] * 6
COMPLETIONS = [words(4), words(5), words(10), words(20), words(21), ""]  # rho = 0.4, 0.5, 1, 2, 2.1, 0


def test_band_by_hand_inclusive_ends() -> None:
    cond = LengthCondition()  # words, column "reference", band [0.5, 2.0], outside -> 0
    outside = cond.outside_mask(COMPLETIONS, {"reference": REFS})
    np.testing.assert_array_equal(outside, [True, False, False, False, True, True])


def test_apply_zero_and_nan_and_counts() -> None:
    matrix = np.array([[0.7, 3.0]] * 6)
    matrix[2, 0] = np.nan  # a failed row stays NaN and is not counted as masked
    out, masked = apply_length_masks(matrix, ["q", "other"], {"q": LengthCondition()}, COMPLETIONS, {"reference": REFS})
    np.testing.assert_array_equal(out[:, 0], [0.0, 0.7, np.nan, 0.7, 0.0, 0.0])
    np.testing.assert_array_equal(out[:, 1], matrix[:, 1])
    assert masked == {"q": 3, "other": 0}
    assert not np.shares_memory(out, matrix) and matrix[0, 0] == 0.7
    out, masked = apply_length_masks(
        matrix, ["q", "other"], {"q": LengthCondition(outside="nan")}, COMPLETIONS, {"reference": REFS}
    )
    assert np.isnan(out[[0, 2, 4, 5], 0]).all() and masked["q"] == 3


def test_missing_reference_keep_or_mask() -> None:
    refs = [None, "", words(4), 8]  # None / empty text: missing; a number is a length
    comps = [words(4)] * 4
    keep = LengthCondition(missing="keep").outside_mask(comps, {"reference": refs})
    mask = LengthCondition(missing="mask").outside_mask(comps, {"reference": refs})
    np.testing.assert_array_equal(keep, [False, False, False, False])
    np.testing.assert_array_equal(mask, [True, True, False, False])  # rho 4/4 = 1, 4/8 = 0.5


def test_fixed_target_and_chars_and_chat_messages() -> None:
    cond = LengthCondition(unit="chars", target=10, tau_l=0.5, tau_u=1.5)
    assert cond.reference is None
    comps = ["abcd", "abcdefghij", [{"role": "assistant", "content": "x" * 16}]]
    np.testing.assert_array_equal(cond.outside_mask(comps, {}), [True, False, True])


def test_tokens_need_ids_and_reference_tokens() -> None:
    cond = LengthCondition(unit="tokens")
    ids = [[1, 2], [1, 2, 3, 4], [1] * 9]
    outside = cond.outside_mask(["x"] * 3, {"completion_ids": ids, "reference_tokens": [[5, 6, 7, 8], 4, 4]})
    np.testing.assert_array_equal(outside, [False, False, True])  # rho 0.5, 1, 2.25
    with pytest.raises(RewardConfigError, match="reference_tokens.*'reference_tokens'.*lacks"):
        cond.outside_mask(["x"] * 3, {"completion_ids": ids, "reference": ["a"] * 3})
    with pytest.raises(RewardConfigError, match="completion_ids"):
        cond.outside_mask(["x"] * 3, {"reference_tokens": [4] * 3})
    target = LengthCondition(unit="tokens", target=2)
    np.testing.assert_array_equal(target.outside_mask(["x"] * 3, {"completion_ids": ids}), [False, False, True])


def test_missing_reference_column_names_it() -> None:
    with pytest.raises(RewardConfigError, match="column 'answer' is not in this batch"):
        LengthCondition(reference="answer").outside_mask(["a"], {"reference": ["a"]})


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"tau_l": 3.0, "tau_u": 2.0}, "tau_l: must be <= tau_u"),
        ({"tau_l": 0.0}, "tau_l: must be a number > 0"),
        ({"tau_u": -1}, "tau_u: must be a number > 0"),
        ({"target": 0}, "target: must be a number > 0"),
        ({"reference": ""}, "reference: must be a column name"),
        ({"reference": "answer", "target": 5}, "target: give either a reference column"),
        ({"unit": "bytes"}, "unit: 'bytes' is not allowed"),
        ({"outside": "drop"}, "outside: 'drop' is not allowed"),
        ({"missing": "skip"}, "missing: 'skip' is not allowed"),
        ({"tau": 1}, r"unknown option\(s\) \['tau'\]"),
    ],
)
def test_validation_names_the_field(options: dict, field: str) -> None:
    with pytest.raises(RewardConfigError, match=field):
        LengthCondition.from_dict(options)


ASCII_TEXT = st.text(alphabet=st.sampled_from(list("ab \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x00")), max_size=30)
ANY_TEXT = st.text(alphabet=st.sampled_from(list("ab \t\n\u00a0\u2003\u3000\x85\x1c")), max_size=30)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(ASCII_TEXT, ANY_TEXT), max_size=8))
def test_word_count_matches_regex(texts: list[str]) -> None:
    expected = [len(re.findall(r"\S+", t)) for t in texts]
    np.testing.assert_array_equal(text_lengths(texts, "words"), expected)


def test_composer_applies_masks_in_score() -> None:
    composer = RewardComposer(
        [Objective("quality", Ones("quality")), Objective("other", Ones("other"))],
        StaticWeights([1.0, 1.0]),
        masks={"quality": LengthCondition(tau_l=0.5, tau_u=2.0)},
    )
    result = composer.score(["p"] * 6, COMPLETIONS, reference=REFS)
    np.testing.assert_array_equal(result.matrix[:, 0], [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(result.matrix[:, 1], [1] * 6)
    assert result.masked == {"quality": 3, "other": 0}
    assert result.failures == {"quality": 0, "other": 0}


def test_composer_keeps_failures_and_masks_apart() -> None:
    composer = RewardComposer(
        [Objective("quality", Ones("quality", [math.nan, 1.0, 1.0, 1.0, 1.0, 1.0]))],
        StaticWeights([1.0]),
        masks={"quality": LengthCondition(outside="nan")},
    )
    result = composer.score(["p"] * 6, COMPLETIONS, reference=REFS)
    assert result.failures == {"quality": 1} and result.masked == {"quality": 2}
    assert np.isnan(result.matrix[[0, 4, 5], 0]).all()


def test_composer_rejects_masks_on_unknown_objectives() -> None:
    with pytest.raises(RewardConfigError, match="masks: 'nope' is not an objective; objectives are a"):
        RewardComposer([Objective("a", Ones("a"))], StaticWeights([1.0]), masks={"nope": LengthCondition()})


def test_no_masks_reports_zero_counts() -> None:
    composer = RewardComposer.static([Ones("a")], [1.0])
    assert composer.score(["p"], ["x"]).masked == {"a": 0}
