"""R^3 (Kim & Seo 2024): factor values, both reward branches, cleaning/cutting, the retriever's cache, truncation
and chunking, switches, the relevance floor, the query-copy trap and guard, the presets and their recipes, and the
hacking probes (three kinds of held-out pairs). The MiniLM retriever is loaded once for the module."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rewards.errors import RewardConfigError
from rewards.r3 import (
    DEFAULT_MAX_LENGTH,
    DEFAULT_SCALE,
    PRESETS,
    ROBUST_FLOOR,
    LengthIncentive,
    QueryRelevance,
    R3Config,
    R3Reward,
    ReferenceRelevance,
    RepetitionPenalty,
    clean_query,
    copy_guard_factor,
    cut_response,
    floored_relevance,
    length_incentive,
    r3_components,
    repetition_penalty,
    strip_copied,
    word_tokens,
)
from rewards.r3.retriever import BACKENDS, Chunks, Retriever, chunk_token_ranges, get_retriever, sentence_starts

REPO = Path(__file__).resolve().parent.parent

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
    li_1, qr_1 = length_incentive(CAPITAL_A), _dot(retriever, CAPITAL_Q, CAPITAL_A)
    cases = {
        "use_qr": ([li * rp, rar * k], [1.0, 1.0]),
        "use_li": ([qr * rp, rar * k], None),
        "use_rp": ([li * qr, rar * k], None),
        # no RAR, no constrained branch: the row with a reference is scored LI * QR * RP like the rest
        "use_rar": ([li * qr * rp, li_1 * qr_1], None),
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
    # both relevances off: the authors' reward without relevance scaling, LI * RP on every row (constrained ones
    # included: not the constant (L_max / 100 / s) * RP), and the retriever is never touched
    off = R3Reward(retriever=_NoRetriever(), use_qr=False, use_rar=False)
    got = off(prompts, answers, reference=refs, qtype=["OPENENDED", "CONSTRAINED"])
    assert got == pytest.approx([li * rp, li_1 * repetition_penalty(CAPITAL_A)], rel=1e-6)


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
    first = retriever.encode(prompts, cache=True, truncation_side="left")  # as R^3 encodes queries
    assert sum(calls) == 2  # two distinct prompts
    second = retriever.encode(prompts, cache=True, truncation_side="left")
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


def test_strip_copied_by_hand() -> None:
    q = "Question: What is the capital of France?\nAnswer:"
    assert strip_copied(q, "What is the capital of France?") == ("", 1.0)  # only the query's words
    assert strip_copied(q, "France? Capital!") == ("", 1.0)
    # the question's key words alone are not a copy
    assert strip_copied(q, "Paris is in France and is its capital.") == (
        "Paris is in France and is its capital.",
        0.0,
    )
    rest, share = strip_copied(q, "The capital of France is Paris.")
    assert rest == "    is Paris." and share == pytest.approx(4 / 6)  # "the capital of france" is a 4-word run
    rest, share = strip_copied(q, "Good question. What is the capital of France? Let me think.")
    # "question what is" is a run of the query too ("Question:" is part of it)
    assert rest == "Good .      ? Let me think." and share == pytest.approx(7 / 11)
    assert strip_copied(q, "What is Paris?")[1] == 0.0  # a 2-word run is not copying (min_run 3)
    assert strip_copied(q, "What is Paris?", min_run=2)[0] == "  Paris?"
    assert strip_copied("Why rainbows?", "Why rainbows? Light bends.") == (
        " ? Light bends.",
        0.5,
    )  # run capped at |query|
    assert strip_copied(q, "...") == ("", 0.0) and strip_copied("", "Some words.") == ("Some words.", 0.0)


def test_copy_guard_factor_by_hand() -> None:
    assert copy_guard_factor(0.9, 0.9) == 1.0  # what the response adds is as relevant as the whole
    assert copy_guard_factor(0.9, 1.2) == 1.0  # clipped
    assert copy_guard_factor(0.8, 0.4) == pytest.approx(0.75)
    assert copy_guard_factor(0.8, 0.08) == pytest.approx(0.19)
    assert copy_guard_factor(0.8, 0.0) == 0.0 and copy_guard_factor(0.8, -0.1) == 0.0
    assert copy_guard_factor(-0.2, 0.1) == 1.0


def test_query_copy_trap_and_guard(retriever: Retriever) -> None:
    prompts = [INFLATION_Q] * 4
    responses = [INFLATION_Q, INFLATION_COPY, INFLATION_A, INFLATION_RESTATE_THEN_ANSWER]
    plain = QueryRelevance(retriever=retriever)(prompts, responses)
    # the trap: restating the question beats answering it
    assert plain[0] > plain[2] and plain[1] > plain[2]
    assert plain[0] == pytest.approx(1.0, abs=1e-4)
    guarded = QueryRelevance(retriever=retriever, copy_guard=True)(prompts, responses)
    assert guarded[0] == pytest.approx(0.0) and guarded[1] < 0.5 * guarded[2]
    assert guarded[2] == pytest.approx(plain[2])  # copies nothing: untouched
    # restates a phrase, then answers: keeps the relevance of its answer, loses the boost of the copied phrase
    rest, _ = strip_copied(INFLATION_Q, INFLATION_RESTATE_THEN_ANSWER)
    qr_rest = _dot(retriever, INFLATION_Q, rest)
    assert guarded[3] == pytest.approx(plain[3] * copy_guard_factor(plain[3], qr_rest), rel=1e-5)
    assert qr_rest < guarded[3] < plain[3] and guarded[3] > guarded[2] - 0.05
    # the combined reward follows: guard off is the paper's reward, untouched
    r_off = R3Reward(retriever=retriever)(prompts, responses)
    r_on = R3Reward(retriever=retriever, copy_guard=True)(prompts, responses)
    assert r_on[2] == pytest.approx(r_off[2]) and r_on[1] < r_off[1] and r_on[0] == pytest.approx(0.0)


def test_copy_guard_spares_short_answers_with_the_questions_key_words(retriever: Retriever) -> None:
    q = "What is the capital of France?"
    answers = ["Paris.", "Paris is the French capital.", "France's capital is Paris, on the Seine."]
    plain = QueryRelevance(retriever=retriever)([q] * 3, answers)
    guarded = QueryRelevance(retriever=retriever, copy_guard=True)([q] * 3, answers)
    assert guarded == pytest.approx(plain)
    # "The capital of France is Paris." copies a 4-word phrase: it keeps most of its relevance, an echo none
    restated, echo = QueryRelevance(retriever=retriever, copy_guard=True)(
        [q] * 2, ["The capital of France is Paris.", q]
    )
    assert restated > 0.7 * _dot(retriever, q, "The capital of France is Paris.") and echo == 0.0


# -- long responses: truncation, chunks, the floor, padding ------------------------------------------------


def test_sentence_starts_and_chunk_ranges_by_hand() -> None:
    text = 'One two. Three four five! "Six?" seven.\nEight'
    assert sentence_starts(text) == [9, 26, 33, 40]  # after ". ", "! ", '?" ', and the line break
    assert sentence_starts("No end") == [] and sentence_starts("Ends here. ") == []
    # 10 one-character pieces; sentences start at pieces 0, 3, 5 (character offsets 0, 6, 10)
    offsets = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13), (14, 15), (16, 17), (18, 19)]
    assert chunk_token_ranges(offsets, [6, 10], 6) == [range(0, 5), range(5, 10)]  # whole sentences packed
    assert chunk_token_ranges(offsets, [6, 10], 3) == [range(0, 3), range(3, 5), range(5, 8), range(8, 10)]
    assert chunk_token_ranges(offsets, [], 100) == [range(0, 10)]
    assert chunk_token_ranges([], [], 4) == []
    # a sentence longer than the window is cut before a word: pieces 5 and 6 continue the word of piece 4
    glued = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9), (9, 10), (10, 11), (12, 13), (14, 15)]
    assert chunk_token_ranges(glued, [], 6) == [range(0, 4), range(4, 9)]
    # no word start in the window's second half: cut at the window
    assert chunk_token_ranges([(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)], [], 2) == [
        range(0, 2),
        range(2, 4),
        range(4, 5),
    ]


def test_encode_chunks_covers_the_whole_text(retriever: Retriever) -> None:
    long_text = " ".join([SKY_A] * 12)  # ~470 word pieces: past MiniLM's 256
    chunks = retriever.encode_chunks([SKY_Q, long_text, "", "  "], max_tokens=64)
    assert isinstance(chunks, Chunks)
    assert chunks.owner.tolist().count(0) == 1 and 2 not in chunks.owner and 3 not in chunks.owner
    np.testing.assert_allclose(chunks.embeddings[0], retriever.encode([SKY_Q])[0], atol=1e-6)  # one chunk: encode
    texts = [t for t, owner in zip(chunks.chunk_texts(), chunks.owner) if owner == 1]
    assert len(texts) >= 8 and " ".join(texts) == long_text  # every word, in order, no overlap
    assert all(len(retriever.tokenizer(t, add_special_tokens=False)["input_ids"]) <= 64 for t in texts)
    np.testing.assert_allclose(np.linalg.norm(chunks.embeddings, axis=1), 1.0, atol=1e-5)
    # pooled: the weighted mean of the chunk embeddings, not renormalised; zeros for a text with no chunk
    weights = np.arange(1, len(chunks.owner) + 1, dtype=np.float64)
    pooled = chunks.pooled(weights)
    rows = chunks.owner == 1
    expected = (chunks.embeddings[rows] * weights[rows, None]).sum(0) / weights[rows].sum()
    np.testing.assert_allclose(pooled[1], expected, atol=1e-6)
    assert np.all(pooled[2:] == 0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        retriever.encode_chunks(["x"], max_tokens=255)


def test_truncation_side(retriever: Retriever) -> None:
    filler = " ".join(["The weather report said it would be mild and dry for the rest of the week."] * 25)
    start_a, start_b = "Bananas are yellow. " + filler, "Trains run on rails. " + filler
    end_a, end_b = filler + " Bananas are yellow.", filler + " Trains run on rails."
    right = retriever.encode([start_a, start_b, end_a, end_b])
    left = retriever.encode([start_a, start_b, end_a, end_b], truncation_side="left")
    assert float(right[0] @ right[1]) < 0.999 and float(right[2] @ right[3]) > 0.9999  # right keeps the start
    assert float(left[0] @ left[1]) > 0.9999 and float(left[2] @ left[3]) < 0.999  # left keeps the end
    with pytest.raises(ValueError, match="truncation_side"):
        retriever.encode(["x"], truncation_side="middle")


def test_floored_relevance_by_hand() -> None:
    np.testing.assert_allclose(floored_relevance(np.array([1.0, 0.3, 0.0, 0.65]), 0.3), [1.0, 0.0, -3 / 7, 0.5])
    np.testing.assert_array_equal(floored_relevance(np.array([0.2, -0.1]), 0.0), [0.2, -0.1])
    with pytest.raises(ValueError, match="floor"):
        floored_relevance(np.array([0.5]), 1.0)


def test_chunked_r3_is_the_sum_of_its_chunks(retriever: Retriever) -> None:
    """LI * QR over the whole response = sum over chunks of LI(chunk) * QR(chunk); the floor shifts every chunk."""
    response = " ".join([SKY_A, OFF_TOPIC, CAPITAL_A, SKY_A.replace("blue", "azure"), OFF_TOPIC.upper()])
    chunks = retriever.encode_chunks([response], max_tokens=32)
    texts = chunks.chunk_texts()
    assert len(texts) >= 4
    q = retriever.encode([SKY_Q])[0].astype(np.float64)
    per_chunk = [length_incentive(t) * float(q @ e) for t, e in zip(texts, chunks.embeddings)]
    reward = R3Reward(retriever=retriever, response_encoding="chunked", chunk_tokens=32, use_rp=False)
    assert reward([SKY_Q], [response])[0] == pytest.approx(sum(per_chunk), rel=1e-5)
    floored = R3Reward(
        retriever=retriever, response_encoding="chunked", chunk_tokens=32, use_rp=False, relevance_floor=0.3
    )
    expected = sum(length_incentive(t) * (float(q @ e) - 0.3) / 0.7 for t, e in zip(texts, chunks.embeddings))
    assert floored([SKY_Q], [response])[0] == pytest.approx(expected, rel=1e-5)


def test_padding_hack_and_the_robust_preset(retriever: Retriever) -> None:
    """The paper's R^3 pays for ~300 words of unrelated true sentences after an answer; the robust preset does not.
    Past 256 word pieces a one-pass QR does not see the text at all; chunked QR does."""
    from tools.r3_pairs import asset_path

    pairs = _read_pairs(asset_path("padded", "heldout"))[:8]
    prompts = [p["prompt"] for p in pairs] * 2
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    paper = np.array(R3Reward(retriever=retriever)(prompts, answers))
    robust = np.array(R3Reward(retriever=retriever, preset="robust")(prompts, answers))
    assert (paper[8:] > paper[:8]).sum() >= 7  # the hack
    assert np.all(robust[:8] > 0) and np.all(robust[8:] < 0)
    # one right-truncated pass never reads what comes after its first 254 pieces; chunks read everything
    padded = pairs[0]["rejected"]
    tail_a, tail_b = padded + " Bananas are yellow.", padded + " " + pairs[0]["chosen"]
    two = [pairs[0]["prompt"]] * 2
    right = QueryRelevance(retriever=retriever, truncation_side="right")(two, [tail_a, tail_b])
    chunked = QueryRelevance(retriever=retriever, response_encoding="chunked")(two, [tail_a, tail_b])
    assert right[0] == pytest.approx(right[1], abs=1e-6) and chunked[1] > chunked[0] + 1e-3


# -- configuration -----------------------------------------------------------------------------------------


def test_config_validation_names_the_field() -> None:
    with pytest.raises(RewardConfigError, match="r3.scale"):
        R3Config(scale=0)
    with pytest.raises(RewardConfigError, match="r3.branch"):
        R3Config(branch="sometimes")
    with pytest.raises(RewardConfigError, match="unknown option"):
        R3Reward(retriever=_NoRetriever(), scael=2.0)
    for bad in (
        {"response_encoding": "whole"},
        {"truncation_side": "middle"},
        {"chunk_tokens": 4},
        {"chunk_tokens": 300},
        {"relevance_floor": 1.0},
        {"relevance_floor": -0.1},
        {"copy_guard_min_run": 1},
        {"copy_guard_min_similarity": 2.0},
    ):
        with pytest.raises(RewardConfigError, match=f"r3.{next(iter(bad))}"):
            R3Config(**bad)
    with pytest.raises(RewardConfigError, match="unknown option.*copy_guard_min_novelty"):
        R3Config.from_kwargs(copy_guard_min_novelty=0.5)
    with pytest.raises(RewardConfigError, match="r3.preset: 'strong'.*paper, robust"):
        R3Config.from_kwargs(preset="strong")
    assert R3Config(stop_strings=["\nHuman:"]).stop_strings == ("\nHuman:",)


def test_presets() -> None:
    assert R3Config.preset("paper") == R3Config()  # the defaults are the paper's reward
    robust = R3Config.preset("robust")
    assert (robust.response_encoding, robust.relevance_floor, robust.copy_guard) == ("chunked", ROBUST_FLOOR, True)
    assert R3Config.from_kwargs(preset="robust", copy_guard=False).copy_guard is False
    assert set(PRESETS) == {"paper", "robust"}
    # the paper preset, field by field: the authors' factors, L_max and truncation side, MiniLM's s, no extensions
    paper = R3Config()
    assert (paper.use_qr, paper.use_rar, paper.use_li, paper.use_rp) == (True, True, True, True)
    assert (paper.max_length, paper.scale, paper.truncation_side) == (512, DEFAULT_SCALE, "left")
    assert (paper.response_encoding, paper.relevance_floor, paper.copy_guard) == ("truncate", 0.0, False)


def test_recipes_use_the_presets() -> None:
    """configs/paper/r3.yaml is the paper's R^3; the quickstart and configs/rewards_r3.yaml the robust one."""
    from alignment.learners.factory import composer_from_spec

    def r3_config(path: str) -> R3Config:
        composer = composer_from_spec(str(REPO / path))
        (component,) = [o.component for o in composer.objectives if isinstance(o.component, R3Reward)]
        return component.config

    assert r3_config("configs/paper/r3.yaml") == R3Config.preset("paper", branch="none")
    assert r3_config("configs/rewards_r3.yaml") == R3Config.preset("robust")
    assert r3_config("configs/quickstart.yaml") == R3Config.preset("robust", branch="none")


def test_registry_builds_the_components() -> None:
    from rewards.registry import build_component

    component = build_component("relevance", "r3.qr", {"copy_guard": True})
    assert component.name == "relevance" and isinstance(component, QueryRelevance)
    assert component.__name__ == "relevance"  # TRL logs reward functions by __name__
    assert component.config.copy_guard
    assert build_component("r3", "r3", {"preset": "robust"}).config == R3Config.preset("robust")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isclose(build_component("li", "r3.li", {})(["q"], ["a b c"])[0], 0.03)


# -- the hacking probes: three kinds of held-out pairs (tools/r3_pairs.py) -----------------------------------


def _read_pairs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_pair_sets_are_the_builders_output(tmp_path: Path) -> None:
    from tools import r3_pairs

    assert r3_pairs.main(["--out-dir", str(tmp_path)]) == 0
    topics: dict[str, set[str]] = {"dev": set(), "heldout": set()}
    for kind in r3_pairs.KINDS:
        for split in r3_pairs.SPLITS:
            shipped = r3_pairs.asset_path(kind, split)
            assert (tmp_path / shipped.name).read_text(encoding="utf-8") == shipped.read_text(encoding="utf-8")
            rows = _read_pairs(shipped)
            assert len(rows) == {"dev": 64, "heldout": 48}[split]
            assert {(r["kind"], r["split"]) for r in rows} == {(kind, split)}
            topics[split] |= {r["topic"] for r in rows}
            for row in rows:
                question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
                chosen, rejected = row["chosen"].strip(), row["rejected"].strip()
                assert row["topic"] in chosen.lower()
                if kind == "padded":
                    assert rejected.startswith(chosen) and len(rejected.split()) - len(chosen.split()) >= 300
                elif kind == "echo":
                    assert question in rejected
                else:
                    assert row["topic"] not in rejected.lower() and len(chosen.split()) < len(rejected.split())
    assert not topics["dev"] & topics["heldout"] and len(topics["heldout"]) == 16


def _accuracy_by_set(composer: Any, kinds: tuple[str, ...], splits: tuple[str, ...] = ("dev", "heldout")) -> dict:
    from alignment.reports.reward_eval import evaluate_pairs, load_preference_pairs
    from tools.r3_pairs import asset_path

    return {
        (kind, split): evaluate_pairs(composer, load_preference_pairs(asset_path(kind, split)))["accuracy"]
        for kind in kinds
        for split in splits
    }


@pytest.mark.slow
def test_recommended_r3_holds_on_the_three_hacks_and_the_paper_r3_does_not(tmp_path: Path) -> None:
    """`align eval-rm` on the six probe sets: the recommended R^3 (configs/rewards_r3.yaml) >= 90% pairwise on each,
    and so does the quickstart's composition that uses it; the paper's (configs/paper/r3.yaml) pays for padding."""
    from alignment.cli import main
    from alignment.learners.factory import composer_from_spec
    from tools.r3_pairs import KINDS, SPLITS, asset_path

    for kind in KINDS:
        for split in SPLITS:
            out = tmp_path / f"{kind}_{split}.json"
            data = str(asset_path(kind, split))
            spec = str(REPO / "configs" / "rewards_r3.yaml")
            assert main(["eval-rm", "--reward", spec, "--data", data, "--out", str(out)]) == 0
            report = json.loads(out.read_text())
            assert report["accuracy"] >= 0.9, (kind, split, report["accuracy"])
    paper = _accuracy_by_set(composer_from_spec(str(REPO / "configs/paper/r3.yaml")), ("padded",))
    assert max(paper.values()) <= 0.1, paper
    # the quickstart's composition (R^3 robust x 2 + target length x 0.5) holds too
    quickstart = _accuracy_by_set(composer_from_spec(str(REPO / "configs/quickstart.yaml")), KINDS)
    assert min(quickstart.values()) >= 0.9, quickstart


@pytest.mark.slow
def test_paper_recipe_runs_shortened(tmp_path: Path) -> None:
    from alignment.cli import main

    run = tmp_path / "paper_r3"
    overrides = ["train.max_steps=2", "train.prompts_per_step=2", "train.save_steps=2", "train.report_to=[none]"]
    args = ["train", str(REPO / "configs" / "paper" / "r3.yaml"), "--output-dir", str(run)]
    for override in [*overrides, "rollout.max_new_tokens=32"]:
        args += ["--set", override]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and set(records[-1]["objectives"]) == {"r3"}


@pytest.mark.slow
def test_copy_guard_fixes_echoes_and_leaves_short_answers_alone() -> None:
    """On the paper's R^3: the guard lifts echo pairs to >= 95% and changes no short-vs-long pair's accuracy."""
    from rewards.composer import Objective, RewardComposer
    from rewards.weighting import StaticWeights

    def composer(**options: Any) -> RewardComposer:
        return RewardComposer([Objective("r3", R3Reward(**options))], StaticWeights([1.0]))

    off = _accuracy_by_set(composer(), ("short_vs_long", "echo"))
    on = _accuracy_by_set(composer(copy_guard=True), ("short_vs_long", "echo"))
    assert on[("echo", "dev")] >= 0.95 and on[("echo", "heldout")] >= 0.95, on
    assert off[("echo", "dev")] < 0.9, off  # the trap is real on these pairs
    for split in ("dev", "heldout"):
        assert on[("short_vs_long", split)] == off[("short_vs_long", split)], (on, off)
