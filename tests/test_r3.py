"""R^3 (Kim & Seo 2024): factor values, both reward branches, cleaning/cutting, the retriever's cache, switches,
and the query-copy trap. The MiniLM retriever is loaded once for the module."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from rewards.errors import RewardConfigError
from rewards.r3 import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_SCALE,
    LengthIncentive,
    QueryRelevance,
    R3Config,
    R3Reward,
    ReferenceRelevance,
    RepetitionPenalty,
    clean_query,
    cut_response,
    length_incentive,
    query_novelty,
    r3_components,
    repetition_penalty,
    word_tokens,
)
from rewards.r3.retriever import BACKENDS, Retriever, get_retriever

SKY_Q = "Why is the sky blue?"
SKY_A = (
    "Sunlight is scattered by the molecules of the air, and short blue wavelengths scatter much more than red "
    "ones (Rayleigh scattering), so blue light reaches our eyes from every part of the sky."
)
OFF_TOPIC = "To bake bread, mix flour, water, yeast and salt, knead the dough, let it rise and bake it in a hot oven."
CAPITAL_Q = "What is the capital of Australia?"
CAPITAL_REF = "The capital of Australia is Canberra."
CAPITAL_A = "Canberra is Australia's capital city, chosen as a compromise between Sydney and Melbourne."


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny batches: one thread is as fast, and does not spin against other work on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever()


def _enc(retriever: Retriever, texts: list[str]) -> np.ndarray:
    return retriever.encode(texts)


def _dot(retriever: Retriever, a: str, b: str) -> float:
    e = retriever.encode([a, b], cache=True)
    return float(e[0] @ e[1])


class _NoRetriever(Retriever):
    """A retriever that must never be used (LI/RP, or QR and RAR switched off)."""

    def __init__(self) -> None:  # no model
        pass

    def encode(self, texts: Any, *, cache: bool = False) -> np.ndarray:
        raise AssertionError("the retriever was used")


# -- LI and RP ---------------------------------------------------------------------------------------------


def test_word_tokens_and_length_incentive_by_hand() -> None:
    assert word_tokens("Hello, world!") == ["Hello", ",", "world", "!"]
    assert length_incentive("Hello, world!") == pytest.approx(0.04)
    assert length_incentive("") == 0.0
    assert length_incentive(" ".join(["word"] * 100)) == pytest.approx(1.0)
    assert length_incentive(" ".join(["word"] * 250)) == pytest.approx(2.5)  # unbounded


def test_repetition_penalty_by_hand() -> None:
    assert repetition_penalty("a b c d") == 1.0  # trigrams abc, bcd: all distinct
    assert repetition_penalty("the cat the cat the cat") == pytest.approx(0.5)  # 2 distinct of 4
    assert repetition_penalty("a b a b a b a") == pytest.approx(2 / 5)
    assert repetition_penalty("one two") == 1.0  # no trigram
    assert repetition_penalty("") == 1.0
    assert repetition_penalty("Yes, yes.") == 1.0  # tokens Yes , yes . -> trigrams "Yes , yes", ", yes ."


def test_li_rp_components_never_load_the_retriever() -> None:
    li = LengthIncentive(retriever=_NoRetriever())
    rp = RepetitionPenalty(retriever=_NoRetriever())
    prompts, completions = ["q", "q"], ["Hello, world!", "the cat the cat the cat"]
    assert li(prompts, completions) == pytest.approx([0.04, 0.06])
    assert rp(prompts, completions) == pytest.approx([1.0, 0.5])
    assert (li.name, rp.name) == ("r3.li", "r3.rp")


# -- QR and RAR --------------------------------------------------------------------------------------------


def test_query_relevance_identical_and_relevant_vs_irrelevant(retriever: Retriever) -> None:
    qr = QueryRelevance(retriever=retriever)
    same, relevant, irrelevant = qr([SKY_Q] * 3, [SKY_Q, SKY_A, OFF_TOPIC])
    assert same == pytest.approx(1.0, abs=1e-4)
    assert relevant > irrelevant + 0.3
    assert relevant == pytest.approx(_dot(retriever, SKY_Q, SKY_A), abs=1e-5)


def test_reference_relevance_is_none_without_reference(retriever: Retriever) -> None:
    rar = ReferenceRelevance(retriever=retriever)
    refs = [CAPITAL_REF, None, "", float("nan")]
    values = rar([CAPITAL_Q] * 4, [CAPITAL_A] * 4, reference=refs)
    assert values[0] == pytest.approx(_dot(retriever, CAPITAL_REF, CAPITAL_A), abs=1e-5)
    assert values[1:] == [None, None, None]
    assert rar([CAPITAL_Q], [CAPITAL_A]) == [None]  # no reference column at all
    # conversational completions and a custom column name
    custom = ReferenceRelevance(retriever=retriever, reference_column="gold")
    msg = [{"role": "assistant", "content": CAPITAL_A}]
    assert custom([CAPITAL_Q], [msg], gold=[CAPITAL_REF]) == pytest.approx([values[0]], abs=1e-6)


def test_empty_response_has_zero_relevance(retriever: Retriever) -> None:
    assert QueryRelevance(retriever=retriever)([SKY_Q], ["<|im_start|>user\nnever mind"]) == [0.0]


# -- the combined reward -----------------------------------------------------------------------------------


def test_open_ended_branch_is_li_qr_rp(retriever: Retriever) -> None:
    reward = R3Reward(retriever=retriever)
    answers = [SKY_A, OFF_TOPIC, SKY_A + " " + SKY_A]  # the third repeats itself: RP < 1
    got = reward([SKY_Q] * 3, answers)
    for answer, value in zip(answers, got):
        expected = length_incentive(answer) * _dot(retriever, SKY_Q, answer) * repetition_penalty(answer)
        assert value == pytest.approx(expected, rel=1e-5)
    assert repetition_penalty(answers[2]) < 1.0


def test_constrained_branch_with_qtype_column(retriever: Retriever) -> None:
    reward = R3Reward(retriever=retriever)
    prompts = [CAPITAL_Q, CAPITAL_Q, CAPITAL_Q]
    answers = [CAPITAL_A, CAPITAL_A, CAPITAL_A + " " + CAPITAL_A]
    got = reward(prompts, answers, reference=[CAPITAL_REF] * 3, qtype=["CONSTRAINED", "OPENENDED", "constrained"])
    rar = [_dot(retriever, CAPITAL_REF, a) for a in answers]
    scale, lmax = DEFAULT_SCALE, DEFAULT_MAX_LENGTH
    assert got[0] == pytest.approx(rar[0] / scale * (lmax / 100) * repetition_penalty(answers[0]), rel=1e-5)
    open_1 = length_incentive(answers[1]) * _dot(retriever, CAPITAL_Q, answers[1]) * repetition_penalty(answers[1])
    assert got[1] == pytest.approx(open_1, rel=1e-5)  # has a reference but is flagged open-ended
    assert got[2] == pytest.approx(rar[2] / scale * (lmax / 100) * repetition_penalty(answers[2]), rel=1e-5)
    assert repetition_penalty(answers[2]) < 1.0


def test_branch_rules(retriever: Retriever) -> None:
    prompts, answers = [CAPITAL_Q, CAPITAL_Q], [CAPITAL_A, CAPITAL_A]
    refs = [CAPITAL_REF, None]
    rar = _dot(retriever, CAPITAL_REF, CAPITAL_A)
    constrained = rar / 2.0 * (300 / 100)
    open_ = length_incentive(CAPITAL_A) * _dot(retriever, CAPITAL_Q, CAPITAL_A)
    # auto without a qtype column: a reference makes a row constrained; custom s, L_max and column
    auto = R3Reward(retriever=retriever, scale=2.0, max_length=300, reference_column="answer")
    assert auto(prompts, answers, answer=refs) == pytest.approx([constrained, open_], rel=1e-5)
    # "none": all open-ended; "reference": ignores qtype
    assert R3Reward(retriever=retriever, branch="none")(prompts, answers, reference=refs) == pytest.approx(
        [open_, open_], rel=1e-5
    )
    by_ref = R3Reward(retriever=retriever, branch="reference", scale=2.0, max_length=300)
    assert by_ref(prompts, answers, reference=refs, qtype=["OPENENDED"] * 2) == pytest.approx(
        [constrained, open_], rel=1e-5
    )
    # custom qtype column and values
    custom = R3Reward(retriever=retriever, branch="qtype", qtype_column="kind", constrained_values=["closed"])
    both = [CAPITAL_REF, CAPITAL_REF]
    rar_default = rar / DEFAULT_SCALE * (DEFAULT_MAX_LENGTH / 100)
    assert custom(prompts, answers, reference=both, kind=["Closed", "other"]) == pytest.approx(
        [rar_default, open_], rel=1e-5
    )
    with pytest.raises(RewardConfigError, match="kind"):
        custom(prompts, answers, reference=both)
    # flagged constrained without a reference: open-ended, with a warning
    with pytest.warns(UserWarning, match="scored open-ended"):
        flagged = R3Reward(retriever=retriever)(prompts, answers, reference=refs, qtype=["CONSTRAINED"] * 2)
    assert flagged[1] == pytest.approx(open_, rel=1e-5)


def test_switch_offs(retriever: Retriever) -> None:
    prompts, answers, refs = [SKY_Q, CAPITAL_Q], [SKY_A + " " + SKY_A, CAPITAL_A], [None, CAPITAL_REF]
    li, rp = length_incentive(answers[0]), repetition_penalty(answers[0])
    qr = _dot(retriever, SKY_Q, answers[0])
    rar = _dot(retriever, CAPITAL_REF, CAPITAL_A)
    k = DEFAULT_MAX_LENGTH / 100 / DEFAULT_SCALE
    cases = {
        "use_qr": ([li * rp, rar * k], [1.0, 1.0]),
        "use_li": ([qr * rp, rar * k], None),
        "use_rp": ([li * qr, rar * k], None),
        "use_rar": ([li * qr * rp, k], None),
    }
    for switch, (expected, qr_expected) in cases.items():
        components = r3_components(retriever=retriever, **{switch: False})
        reward, qr_c, rar_c, li_c, rp_c = components
        assert reward(prompts, answers, reference=refs) == pytest.approx(expected, rel=1e-5), switch
        if qr_expected is not None:
            assert qr_c(prompts, answers, reference=refs) == qr_expected
    assert LengthIncentive(retriever=retriever, use_li=False)(prompts, answers) == [1.0, 1.0]
    assert RepetitionPenalty(retriever=retriever, use_rp=False)(prompts, answers) == [1.0, 1.0]
    assert ReferenceRelevance(retriever=retriever, use_rar=False)(prompts, answers, reference=refs) == [None, 1.0]
    # both relevances off: the retriever is never touched
    off = R3Reward(retriever=_NoRetriever(), use_qr=False, use_rar=False)
    assert off(prompts, answers, reference=refs) == pytest.approx([li * rp, k], rel=1e-6)


# -- cleaning and cutting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "query"),
    [
        (
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhy is the sky blue?<|im_end|>\n"
            "<|im_start|>assistant\n",
            "Why is the sky blue?",
        ),
        (
            "Below is an instruction that describes a task, paired with an input. Write a response.\n\n"
            "### Instruction:\nSummarise the text.\n\n### Input:\nThe cat sat on the mat.\n\n### Response:",
            "Summarise the text. The cat sat on the mat.",
        ),
        ("A chat between a user and an assistant. USER: Hello there? ASSISTANT:", "Hello there?"),
        ("\n\nHuman: What is X?\n\nAssistant:", "What is X?"),
        ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhy is the sky blue? [/INST]", "Why is the sky blue?"),
        (
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nSys<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>",
            "Hi there",
        ),
        ("<start_of_turn>user\nGemma asks<end_of_turn>\n<start_of_turn>model\n", "Gemma asks"),
        ("<|system|>\nsys</s>\n<|user|>\nZephyr asks</s>\n<|assistant|>\n", "Zephyr asks"),
        ("### Human: first\n### Assistant: answer\n### Human: second\n### Assistant:", "second"),
        # not role tags: content stays
        ("Question: Why? Context: the user: said so.", "Question: Why? Context: the user: said so."),
        ("### Human: Question: what is 2+2?\n### Assistant:", "Question: what is 2+2?"),
        ("Plain prompt\nwith two lines", "Plain prompt with two lines"),
    ],
)
def test_clean_query(prompt: str, query: str) -> None:
    assert clean_query(prompt) == query


def test_conversational_prompt_drops_system(retriever: Retriever) -> None:
    conversation = [
        {"role": "system", "content": "You are a pirate. Always talk about ships and treasure."},
        {"role": "user", "content": SKY_Q},
    ]
    qr = QueryRelevance(retriever=retriever)
    assert qr([conversation], [SKY_A]) == pytest.approx(qr([SKY_Q], [SKY_A]), abs=1e-6)


@pytest.mark.parametrize(
    ("response", "cut"),
    [
        ("\n Sure, here it is.\nHuman: and another?\nAssistant: ok", "Sure, here it is."),
        ("The answer is 4.\nQuestion: what is 3+3?", "The answer is 4."),
        ("The answer is 4.\nUser: thanks", "The answer is 4."),
        ("Done.<|im_end|>\n<|im_start|>user\nmore", "Done."),
        ("Done.\n### Human: next", "Done."),
        ("Text\n\n\n\nnoise", "Text"),
        ("Question: is a word here, not a role.", "Question: is a word here, not a role."),
    ],
)
def test_cut_response(response: str, cut: str) -> None:
    assert cut_response(response) == cut


def test_cutting_feeds_every_factor() -> None:
    li = LengthIncentive(retriever=_NoRetriever())
    assert li(["q"], ["one two three\nHuman: four five six seven"]) == pytest.approx([0.03])
    uncut = LengthIncentive(retriever=_NoRetriever(), cut_response=False)
    assert uncut(["q"], ["a b\nHuman: c"]) == pytest.approx([0.05])  # a, b, Human, :, c


# -- retriever ---------------------------------------------------------------------------------------------


def test_retriever_matches_sentence_transformers(retriever: Retriever) -> None:
    from rewards.r3.retriever import _load_sentence_transformer

    texts = [SKY_Q, SKY_A, OFF_TOPIC, "", "word " * 400, SKY_Q]
    ours = retriever.encode(texts)
    theirs = _load_sentence_transformer(retriever.model_path).encode(texts, normalize_embeddings=True)
    assert ours.shape == (6, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert retriever.encode([]).shape == (0, 384)
    # small batches and a tight token budget give the same rows back in input order
    small = Retriever(batch_size=2, max_batch_tokens=64, cache_size=0)
    np.testing.assert_allclose(small.encode(texts), ours, atol=2e-5)
    assert small.stats.forward_calls >= 3


def test_cache_encodes_repeated_prompts_once() -> None:
    retriever = Retriever(cache_size=16)
    calls: list[int] = []
    forward = retriever._forward

    def counting(rows: list[list[int]]) -> np.ndarray:
        calls.append(len(rows))
        return forward(rows)

    retriever._forward = counting  # type: ignore[method-assign]
    prompts = [SKY_Q, CAPITAL_Q, SKY_Q, SKY_Q]
    first = retriever.encode(prompts, cache=True)
    assert sum(calls) == 2  # two distinct prompts
    second = retriever.encode(prompts, cache=True)
    assert sum(calls) == 2  # all from the cache
    np.testing.assert_array_equal(first, second)
    assert retriever.stats.cache_hits == 4 and retriever.cache_len == 2
    # a GRPO step: 2 prompts x 3 completions; the prompts are already cached
    reward = R3Reward(retriever=retriever)
    completions = [SKY_A, OFF_TOPIC, "Blue light scatters more.", CAPITAL_A, "Sydney.", "I do not know."]
    reward([SKY_Q] * 3 + [CAPITAL_Q] * 3, completions)
    assert sum(calls) == 2 + 6  # only the six completions were encoded
    # the other components on the same batch reuse the memo: no encoder call at all
    for component in r3_components(retriever=retriever)[1:]:
        component([SKY_Q] * 3 + [CAPITAL_Q] * 3, completions)
    assert sum(calls) == 2 + 6 + 6  # r3_components has its own scorer: one more pass over the completions


def test_lru_evicts_oldest() -> None:
    retriever = Retriever(cache_size=2)
    retriever.encode(["a", "b"], cache=True)
    retriever.encode(["a"], cache=True)  # a is now the newest
    retriever.encode(["c"], cache=True)  # evicts b
    before = retriever.stats.encoded
    retriever.encode(["a", "c"], cache=True)
    assert retriever.stats.encoded == before
    retriever.encode(["b"], cache=True)
    assert retriever.stats.encoded == before + 1


def test_unknown_backend_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'onnx'.*fp32, int8, int8-full"):
        get_retriever("onnx")
    with pytest.raises(ValueError, match="unknown backend"):
        Retriever(backend="onnx")
    with pytest.raises(RewardConfigError, match="r3.backend"):
        R3Config(backend="onnx")
    assert BACKENDS == ("fp32", "int8", "int8-full")


def test_get_retriever_is_shared() -> None:
    assert get_retriever() is get_retriever("fp32")


def test_int8_backend_agrees_with_fp32(retriever: Retriever) -> None:
    int8 = get_retriever("int8")
    texts = [SKY_Q, SKY_A, OFF_TOPIC, CAPITAL_Q, CAPITAL_A, CAPITAL_REF]
    a, b = retriever.encode(texts), int8.encode(texts)
    assert (a * b).sum(1).min() > 0.9
    sims_a, sims_b = a @ a.T, b @ b.T
    assert np.abs(sims_a - sims_b).max() < 0.08
    assert sims_b[0, 1] > sims_b[0, 2]  # relevant still beats irrelevant


# -- the query-copy trap -----------------------------------------------------------------------------------

INFLATION_Q = "What are the main causes of inflation?"
INFLATION_COPY = "You are asking what the main causes of inflation are."
INFLATION_A = (
    "Inflation usually comes from demand growing faster than the economy can produce, from rising costs such as "
    "wages and energy that firms pass on to prices, and from a money supply that expands faster than output."
)
INFLATION_RESTATE_THEN_ANSWER = (
    "The main causes of inflation are demand outpacing supply, rising costs of wages and energy, and too much "
    "money chasing too few goods."
)


def test_query_copy_trap_and_guard(retriever: Retriever) -> None:
    prompts = [INFLATION_Q] * 4
    responses = [INFLATION_Q, INFLATION_COPY, INFLATION_A, INFLATION_RESTATE_THEN_ANSWER]
    plain = QueryRelevance(retriever=retriever)(prompts, responses)
    # the trap: restating the question beats answering it
    assert plain[0] > plain[2] and plain[1] > plain[2]
    assert plain[0] == pytest.approx(1.0, abs=1e-4)
    assert query_novelty(INFLATION_Q, INFLATION_Q) == 0.0
    assert query_novelty(INFLATION_Q, INFLATION_A) > 0.8
    guarded = QueryRelevance(retriever=retriever, copy_guard=True)(prompts, responses)
    assert guarded[0] == pytest.approx(0.0) and guarded[1] < guarded[2]
    assert guarded[2] == pytest.approx(plain[2]) and guarded[3] == pytest.approx(plain[3])
    # the combined reward follows: guard off is the paper's reward, untouched
    r_off = R3Reward(retriever=retriever)(prompts, responses)
    r_on = R3Reward(retriever=retriever, copy_guard=True)(prompts, responses)
    assert r_on[2:] == pytest.approx(r_off[2:]) and r_on[1] < r_off[1]


# -- configuration -----------------------------------------------------------------------------------------


def test_config_validation_names_the_field() -> None:
    with pytest.raises(RewardConfigError, match="r3.scale"):
        R3Config(scale=0)
    with pytest.raises(RewardConfigError, match="r3.branch"):
        R3Config(branch="sometimes")
    with pytest.raises(RewardConfigError, match="unknown option"):
        R3Reward(retriever=_NoRetriever(), scael=2.0)
    with pytest.raises(RewardConfigError, match="copy_guard_min_novelty"):
        R3Config(copy_guard_min_novelty=0.0)
    assert R3Config(stop_strings=["\nHuman:"]).stop_strings == ("\nHuman:",)


def test_registry_builds_the_components() -> None:
    from rewards.registry import build_component

    component = build_component("relevance", "r3.qr", {"copy_guard": True})
    assert component.name == "relevance" and isinstance(component, QueryRelevance)
    assert component.__name__ == "relevance"  # TRL logs reward functions by __name__
    assert component.config.copy_guard
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isclose(build_component("li", "r3.li", {})(["q"], ["a b c"])[0], 0.03)
