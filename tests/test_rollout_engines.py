"""Engine plumbing: wire formats, the prompt-length policy, weight-sync payloads, engine choice from a recipe
(vllm -> transformers fallback with a warning) and the rollout section's validation."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment.errors import ConfigError
from alignment.recipes.loader import load_dataclass
from alignment.recipes.recipe import RolloutConfig
from rollout.base import PromptLimit, PromptTooLongError, Sample, SamplingParams
from rollout.transformers_engine import TransformersEngine
from rollout.weight_sync import (
    adapter_weights,
    from_safetensors_bytes,
    full_weights,
    resolve_sync_mode,
    to_safetensors_bytes,
)

LONG_PROMPT = "Question: " + "Tell me about bread and rivers. " * 40 + "\nAnswer:"


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_sampling_params_and_samples_round_trip_through_json() -> None:
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, top_k=5, max_tokens=9, stop=("\n",), seed=4)
    assert SamplingParams.from_dict(params.to_dict()) == params
    sample = Sample("hi", [1, 2], [3, 4], [-0.5, -1.0], "stop")
    assert Sample.from_dict(sample.to_dict()) == sample
    for bad, why in [
        ({"tempp": 1}, "unknown sampling parameter 'tempp'"),
        ({"n": 0}, "n must be >= 1"),
        ({"n": 1.5}, "n must be an integer"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"stop": "x"}, "stop must be a list"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"seed": True}, "seed must be an integer"),
    ]:
        with pytest.raises(ValueError, match=why):
            SamplingParams.from_dict(bad)
    with pytest.raises(ValueError, match="missing field"):
        Sample.from_dict({"text": "x"})


def test_prompt_limit_truncates_from_the_left_or_refuses(caplog) -> None:
    ids = [list(range(10)), list(range(3))]
    limit = PromptLimit(max_prompt_tokens=4)
    with caplog.at_level(logging.WARNING, logger="rollout"):
        fitted, cut = limit.apply(ids, context_length=None, max_tokens=8)
    assert fitted == [[6, 7, 8, 9], [0, 1, 2]] and cut == 1
    assert "truncated 1 of 2 prompts from the left to 4 tokens (max_prompt_tokens=4; the longest had 10)" in caplog.text
    # Without max_prompt_tokens the budget is the context minus max_tokens; the tighter of the two wins.
    assert PromptLimit().budget(context_length=16, max_tokens=10) == 6
    assert PromptLimit(max_prompt_tokens=8).budget(context_length=16, max_tokens=10) == 6
    assert PromptLimit().budget(context_length=None, max_tokens=10) is None
    with pytest.raises(PromptTooLongError, match=r"1 of 2 prompts are longer than 6 tokens \(the model's context 16"):
        PromptLimit(truncation="error").apply(ids, context_length=16, max_tokens=10)
    with pytest.raises(PromptTooLongError, match="leaves no room for a prompt"):
        PromptLimit().apply(ids, context_length=16, max_tokens=16)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        PromptLimit(max_prompt_tokens=0)


def test_transformers_engine_cuts_long_prompts_to_the_context(model_and_tokenizer, caplog) -> None:
    model, tokenizer = model_and_tokenizer
    full = tokenizer(LONG_PROMPT)["input_ids"]
    assert len(full) > 256 - 8  # longer than the tiny model's context minus max_tokens
    engine = TransformersEngine(model, tokenizer, batch_size=4)
    with caplog.at_level(logging.WARNING, logger="rollout"):
        out = engine.generate([LONG_PROMPT, "Hi"], SamplingParams(max_tokens=8, seed=0))
    assert out[0][0].prompt_ids == full[-(256 - 8) :]  # the end of the prompt is kept
    assert engine.truncated_prompts == 1 and "truncated 1 of 2 prompts" in caplog.text
    capped = TransformersEngine(model, tokenizer, max_prompt_tokens=5)
    assert (
        capped.generate(["Question: What is a volcano?\nAnswer:"], SamplingParams(max_tokens=2))[0][0].prompt_ids
        == (tokenizer("Question: What is a volcano?\nAnswer:")["input_ids"][-5:])
    )
    strict = TransformersEngine(model, tokenizer, prompt_truncation="error")
    with pytest.raises(PromptTooLongError, match="prompt 0 with"):
        strict.generate([LONG_PROMPT], SamplingParams(max_tokens=8))


def test_update_weights_checks_names_and_shapes_first(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    engine = TransformersEngine(model, tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    name = "model.norm.weight"
    with pytest.raises(ValueError, match="unknown parameter name"):
        engine.update_weights({name: torch.ones_like(before[name]), "bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch"):
        engine.update_weights({name: torch.ones(3)})
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), before[name])  # nothing changed
    engine.update_weights({name: 2 * before[name]})
    torch.testing.assert_close(dict(model.named_parameters())[name].detach(), 2 * before[name])
    engine.update_weights({name: before[name]})


def test_weight_payloads(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    plain = full_weights(model)
    assert set(plain) == {n for n, _ in model.named_parameters()}
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    merged = full_weights(peft_model)
    assert set(merged) == set(plain)  # plain Hugging Face names, no LoRA tensors
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    torch.testing.assert_close(merged[q], layer.base_layer.weight.detach() + delta.detach(), atol=1e-6, rtol=0)
    tensors, config = adapter_weights(peft_model)
    assert len(tensors) == 4 and all("lora_" in k for k in tensors)
    assert config["r"] == 2 and config["target_modules"] == ["q_proj"] and config["peft_type"] == "LORA"

    data = to_safetensors_bytes(tensors, {"adapter_config": "{}"})
    loaded, metadata = from_safetensors_bytes(data)
    assert metadata == {"adapter_config": "{}"}
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
    for bad in (b"", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}xx"):
        with pytest.raises(ValueError, match="safetensors"):
            from_safetensors_bytes(bad)


def test_sync_mode_resolution() -> None:
    assert resolve_sync_mode("auto", uses_peft=True) == "adapter"
    assert resolve_sync_mode("auto", uses_peft=False) == "full"
    assert resolve_sync_mode("full", uses_peft=True) == "full"
    with pytest.raises(ValueError, match="needs a PEFT"):
        resolve_sync_mode("adapter", uses_peft=False)


def settings(**overrides) -> SimpleNamespace:
    return SimpleNamespace(**{**RolloutConfig().__dict__, **overrides})


def test_vllm_falls_back_to_transformers_with_a_clear_warning(model_and_tokenizer, monkeypatch, caplog) -> None:
    from rollout import factory

    model, tokenizer = model_and_tokenizer
    monkeypatch.setattr(factory, "vllm_import_error", lambda: "ModuleNotFoundError: No module named 'vllm'")
    with caplog.at_level(logging.WARNING, logger="rollout"), pytest.warns(RuntimeWarning, match="falling back"):
        engine = factory.build_engine(settings(engine="vllm", batch_size=3), model, tokenizer, model_path="x")
    assert isinstance(engine, TransformersEngine) and engine.batch_size == 3
    assert not hasattr(engine, "weight_sync")  # shares the learner's weights
    assert "No module named 'vllm'" in caplog.text and "pip install '.[vllm]'" in caplog.text
    with pytest.raises(ValueError, match="engine must be"):
        factory.build_standalone_engine("tgi", "x")


def test_a_server_url_gives_a_synced_remote_engine(model_and_tokenizer, monkeypatch) -> None:
    from rollout import factory
    from rollout.remote_engine import RemoteEngine
    from rollout.server import RolloutServer

    model, tokenizer = model_and_tokenizer
    server = RolloutServer(TransformersEngine(model, tokenizer), port=0).start()
    try:
        engine = factory.build_engine(settings(server_url=server.url), model, tokenizer, model_path="x", peft_rank=8)
        assert isinstance(engine, RemoteEngine)
        assert engine.weight_sync.mode == "adapter" and engine.weight_sync.shared
        full = factory.build_engine(settings(server_url=server.url), model, tokenizer, model_path="x")
        assert full.weight_sync.mode == "full"
        with pytest.raises(ValueError, match="needs a PEFT"):
            factory.build_engine(
                settings(server_url=server.url, weight_sync="adapter"), model, tokenizer, model_path="x"
            )
    finally:
        server.shutdown()


def test_rollout_section_fields_are_validated() -> None:
    ok = load_dataclass(
        RolloutConfig,
        {"server_url": "http://127.0.0.1:8000", "max_prompt_tokens": 128, "prompt_truncation": "error"},
        "rollout",
    )
    assert ok.server_url == "http://127.0.0.1:8000" and ok.weight_sync == "auto"
    for data, message in [
        ({"server_url": "127.0.0.1:8000"}, "rollout.server_url: '127.0.0.1:8000': must start with http://"),
        ({"max_prompt_tokens": 0}, "rollout.max_prompt_tokens: must be positive or null, got 0"),
        ({"prompt_truncation": "right"}, "rollout.prompt_truncation: 'right' is not allowed"),
        ({"retries": -1}, "rollout.retries: must be >= 0, got -1"),
        ({"retry_backoff_s": -0.5}, "rollout.retry_backoff_s: must be >= 0"),
        ({"request_timeout_s": 0}, "rollout.request_timeout_s: must be > 0"),
        ({"weight_sync": "lora"}, "rollout.weight_sync: 'lora' is not allowed"),
        ({"gpu_memory_utilization": 1.5}, r"rollout.gpu_memory_utilization: must be in \(0, 1\]"),
        ({"vllm_options": [1]}, "rollout.vllm_options: expected a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_dataclass(RolloutConfig, data, "rollout")


def test_load_policy_takes_model_and_adapter_folders(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    from rollout.loading import ModelLoadError, load_policy

    model, tokenizer = load_policy(tiny_model_dir)
    assert tokenizer.padding_side == "left" and not model.training
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    peft_model.save_pretrained(str(tmp_path / "adapter"))  # adapter_config.json names the base folder
    merged, _ = load_policy(tmp_path / "adapter")
    ids = torch.tensor([tokenizer("Question: What is a volcano?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_policy(tmp_path)
    with pytest.raises(ModelLoadError, match="dtype"):
        load_policy(tiny_model_dir, dtype="int4")
