"""The transformers engine: shapes, logprobs against a forward pass, EOS/stop handling, grouping of repeats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment.learners.grpo import generate_for_prompts, run_lengths
from rollout.base import SamplingParams
from rollout.transformers_engine import TransformersEngine, truncate_at_stop


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> TransformersEngine:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    return TransformersEngine(model, tokenizer, batch_size=8)


def test_generates_n_samples_per_prompt_with_consistent_fields(engine: TransformersEngine) -> None:
    prompts = ["Question: What is a volcano?\nAnswer:", "Question: Bread?\nAnswer:", "Hi"]
    out = engine.generate(prompts, SamplingParams(n=3, max_tokens=12, seed=0))
    assert [len(group) for group in out] == [3, 3, 3]
    for prompt, group in zip(prompts, out):
        for sample in group:
            assert sample.prompt_ids == engine.tokenizer(prompt)["input_ids"]
            assert 1 <= len(sample.completion_ids) <= 12
            assert len(sample.logprobs) == len(sample.completion_ids)
            assert all(lp <= 0 for lp in sample.logprobs)
            assert sample.finish_reason in ("stop", "length")
            if sample.finish_reason == "length":
                assert len(sample.completion_ids) == 12


def test_logprobs_match_a_teacher_forced_forward_pass(engine: TransformersEngine) -> None:
    params = SamplingParams(n=2, max_tokens=10, temperature=0.7, seed=1)
    sample = engine.generate(["Question: Tell me about bread.\nAnswer:"], params)[0][1]
    ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
    with torch.no_grad():
        logits = engine.model(ids).logits[0, len(sample.prompt_ids) - 1 : -1] / params.temperature
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(sample.completion_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=1e-4, rtol=1e-4)


def test_same_seed_same_samples(engine: TransformersEngine) -> None:
    params = SamplingParams(n=2, max_tokens=8, seed=123)
    first = engine.generate(["Hi"], params)[0]
    second = engine.generate(["Hi"], params)[0]
    assert [s.completion_ids for s in first] == [s.completion_ids for s in second]


def test_truncate_at_eos_and_stop_strings(engine: TransformersEngine) -> None:
    tok = engine.tokenizer
    eos = tok.eos_token_id
    ids = tok("Bread is baked")["input_ids"]
    assert truncate_at_stop(ids + [eos] + ids, {eos}, (), tok) == (ids + [eos], True)
    assert truncate_at_stop(ids, {eos}, (), tok) == (ids, False)
    cut, stopped = truncate_at_stop(ids, {eos}, ("baked",), tok)
    assert stopped and tok.decode(cut).endswith("baked")


def test_run_lengths_and_grouped_generation(engine: TransformersEngine) -> None:
    assert run_lengths(["a", "a", "b", "b", "a"]) == [("a", 2), ("b", 2), ("a", 1)]
    prompts = ["Question: A?\nAnswer:"] * 3 + ["Question: B?\nAnswer:"] * 3
    samples = generate_for_prompts(engine, prompts, SamplingParams(max_tokens=5, seed=0))
    assert len(samples) == 6
    assert [s.prompt_ids for s in samples] == [engine.tokenizer(p)["input_ids"] for p in prompts]
    uneven = generate_for_prompts(engine, prompts[:4], SamplingParams(max_tokens=5, seed=0))
    assert len(uneven) == 4


def test_chat_prompts_use_the_chat_template(engine: TransformersEngine, tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    chat_engine = TransformersEngine(engine.model, tokenizer)
    messages = [{"role": "user", "content": "What is a volcano?"}]
    sample = chat_engine.generate([messages], SamplingParams(max_tokens=4, seed=0))[0][0]
    assert tokenizer.decode(sample.prompt_ids) == "user: What is a volcano?\nassistant:"
