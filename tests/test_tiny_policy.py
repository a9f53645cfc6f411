"""Tests of the shipped tiny policy (alignment/assets/tiny_policy), its prompt sets and the corpus generator."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import tiny_policy as tp  # noqa: E402

ASSETS = REPO / "alignment" / "assets"
POLICY = ASSETS / "tiny_policy"


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def policy():
    """The shipped model and tokenizer, loaded the way the quickstart loads them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(POLICY, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(POLICY, local_files_only=True).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def corpus_words() -> set[str]:
    """Every word of the fact table and question templates, lower-cased."""
    texts = [fact for facts in tp.FACTS.values() for fact in facts]
    texts += [t.format(topic=topic) for t in tp.TRAIN_TEMPLATES + tp.HELDOUT_TEMPLATES for topic in tp.TOPICS]
    return {w.lower() for text in texts for w in re.findall(r"[A-Za-z]+", text)}


def test_shipped_folder_is_small_and_complete():
    files = {p.name for p in POLICY.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files
    assert sum(p.stat().st_size for p in POLICY.iterdir()) < 15 * 2**20


def test_model_and_tokenizer_load(policy):
    model, tokenizer = policy
    assert sum(p.numel() for p in model.parameters()) <= 3_000_000
    assert model.config.max_position_embeddings == 256
    assert tokenizer.eos_token_id is not None and tokenizer.pad_token_id is not None
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert len(tokenizer) <= model.config.vocab_size


def test_tokenizer_prompt_boundary(policy):
    """Prompt + completion tokenises as prompt tokens followed by completion tokens; nothing is added."""
    _, tokenizer = policy
    prompt = tp.format_prompt("Tell me about bread.")
    completion = " " + tp.FACTS["bread"][0]
    ids = tokenizer(prompt + completion)["input_ids"]
    assert ids == tokenizer(prompt)["input_ids"] + tokenizer(completion)["input_ids"]
    assert tokenizer.eos_token_id not in ids and tokenizer.pad_token_id not in ids
    assert tokenizer.decode(ids) == prompt + completion


def test_generation_terminates_with_real_words(policy, corpus_words):
    model, tokenizer = policy
    rows = _read_jsonl(ASSETS / "quickstart_eval_prompts.jsonl")[:4]
    enc = tokenizer([r["prompt"] for r in rows], return_tensors="pt", padding=True, padding_side="left")
    width = enc["input_ids"].shape[1]
    torch.manual_seed(0)
    with torch.no_grad():
        greedy = model.generate(**enc, do_sample=False, max_new_tokens=64)
        sampled = model.generate(
            **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=64, num_return_sequences=4
        )
    for out, min_eos_fraction in ((greedy, 1.0), (sampled, 0.75)):
        new = out[:, width:]
        ended = (new == tokenizer.eos_token_id).any(dim=1).float().mean().item()
        assert ended >= min_eos_fraction
        texts = tokenizer.batch_decode(new, skip_special_tokens=True)
        words = [w.lower() for text in texts for w in re.findall(r"[A-Za-z]+", text)]
        assert len(words) >= 3 * len(texts)
        assert sum(w in corpus_words for w in words) / len(words) > 0.95


def test_corpus_is_deterministic_and_noisy():
    first = tp.generate_corpus(seed=0, num_docs=3000)
    assert first == tp.generate_corpus(seed=0, num_docs=3000)
    assert first != tp.generate_corpus(seed=1, num_docs=3000)
    on_topic = sum(d.on_topic for d in first) / len(first)
    assert 0.45 < on_topic < 0.55
    for doc in first[:200]:
        assert tp.mentions_topic(doc.question, doc.topic)
        assert tp.mentions_topic(doc.answer, doc.answer_topic)
        assert 1 <= len(re.findall(r"[.!?](?:\s|$)", doc.answer)) <= 5


def test_fact_table_is_consistent():
    tp.validate_facts()
    assert 40 <= len(tp.TOPICS) <= 60
    with pytest.raises(ValueError):
        tp.validate_facts({"bread": ("Bread is good.",), "rice": ("Rice is eaten with bread.",)})
    with pytest.raises(ValueError):
        tp.validate_facts({"bread": ("Toast is good.",)})


def test_shipped_prompt_sets_match_generator_and_are_held_out():
    train_rows, eval_rows = tp.build_prompt_sets(seed=0)
    assert _read_jsonl(ASSETS / "quickstart_prompts.jsonl") == train_rows
    assert _read_jsonl(ASSETS / "quickstart_eval_prompts.jsonl") == eval_rows
    assert 64 <= len(train_rows) <= 128 and len(eval_rows) == 32
    corpus_questions = {t.format(topic=topic) for t, topic in tp.split_combos(seed=0)[0]}
    for rows, held_out in ((train_rows, False), (eval_rows, True)):
        for row in rows:
            assert set(row) == {"prompt", "topic", "reference"}
            assert row["prompt"].startswith("Question: ") and row["prompt"].endswith("\nAnswer:")
            question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
            assert (question in corpus_questions) is not held_out
            assert tp.mentions_topic(question, row["topic"]) and tp.mentions_topic(row["reference"], row["topic"])
    assert len({r["topic"] for r in eval_rows}) == len(eval_rows)


@pytest.mark.slow
def test_rebuild_runs_end_to_end(tmp_path):
    """A few training steps on a small corpus: the whole pipeline runs and writes a loadable folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny_policy"
    tp.main(["--out", str(out), "--steps", "3", "--num-docs", "300", "--batch-size", "8"])
    assert AutoModelForCausalLM.from_pretrained(out, local_files_only=True) is not None
    assert AutoTokenizer.from_pretrained(out, local_files_only=True).eos_token == tp.EOS_TOKEN
    assert (tmp_path / "quickstart_prompts.jsonl").exists() and (out / "README.md").exists()
