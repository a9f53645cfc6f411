"""The vLLM engine. Tests marked `vllm` run the real `vllm.LLM` on the tiny policy (GPU machines with the extra
installed) and skip elsewhere; the others check the engine's own glue (parameter translation, outputs to
Samples, sleep/wake order, weight and LoRA updates) against a scripted stand-in for `vllm.LLM`."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rollout.base import PromptTooLongError, SamplingParams
from rollout.vllm_engine import VLLMEngine, supported_lora_rank

REPO = Path(__file__).resolve().parent.parent
TINY_POLICY = REPO / "alignment" / "assets" / "tiny_policy"


class ScriptedLLM:
    """Answers every prompt with tokens 5, 6 (then EOS 0 on odd completions), logprob -0.25 each."""

    def __init__(self, tokenizer: Any, max_model_len: int = 32) -> None:
        self.tokenizer = tokenizer
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.llm_engine = SimpleNamespace(remove_lora=lambda lora_id: self.log.append(("remove_lora", lora_id)))
        self.log: list[Any] = []
        self.loaded: list[str] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts, sampling_params, *, lora_request=None, use_tqdm=True):
        self.log.append(("generate", prompts, sampling_params, lora_request))
        outputs = []
        for _ in prompts:
            completions = []
            for i in range(sampling_params.n):
                ids = [5, 6, 0] if i % 2 else [5, 6]
                completions.append(
                    SimpleNamespace(
                        text="ab",
                        token_ids=ids,
                        logprobs=[{t: SimpleNamespace(logprob=-0.25)} for t in ids],
                        finish_reason="stop" if i % 2 else "length",
                    )
                )
            outputs.append(SimpleNamespace(outputs=completions))
        return outputs

    def sleep(self, level: int = 1) -> None:
        self.log.append(("sleep", level))

    def wake_up(self, tags=None) -> None:
        self.log.append(("wake_up",))

    def apply_model(self, func):
        model = SimpleNamespace(load_weights=lambda weights: self.loaded.extend(name for name, _ in weights))
        return [func(model)]

    def reset_prefix_cache(self) -> None:
        self.log.append(("reset_prefix_cache",))


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-ins for `vllm.SamplingParams` and `vllm.lora.request.LoRARequest` (records their arguments)."""
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = lambda **kwargs: SimpleNamespace(**kwargs)
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, lora_id, path: SimpleNamespace(lora_name=name, lora_int_id=lora_id, path=path)
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_generate_translates_params_and_outputs(fake_vllm, tokenizer) -> None:
    llm = ScriptedLLM(tokenizer)
    engine = VLLMEngine("tiny", llm=llm, max_prompt_tokens=6)
    prompt = "Question: What is a volcano?\nAnswer:"
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=4, stop=("\n",), seed=3)
    groups = engine.generate([prompt, "Hi"], params)
    _, sent, sampling, lora = llm.log[0]
    assert sent[0] == {"prompt_token_ids": tokenizer(prompt)["input_ids"][-6:]}  # cut from the left
    assert engine.truncated_prompts == 1
    assert vars(sampling) == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": -1,
        "max_tokens": 4,
        "stop": ["\n"],
        "seed": 3,
        "logprobs": 0,
    }
    assert lora is None
    first, second = groups[0]
    assert first.completion_ids == [5, 6] and first.logprobs == [-0.25, -0.25] and first.finish_reason == "length"
    assert second.completion_ids == [5, 6, 0] and second.finish_reason == "stop"
    assert first.prompt_ids == sent[0]["prompt_token_ids"] and first.text == "ab"
    with pytest.raises(PromptTooLongError):
        VLLMEngine("tiny", llm=ScriptedLLM(tokenizer, max_model_len=4)).generate([prompt], params)


def test_sleep_mode_wakes_for_work_and_sleeps_after(fake_vllm, tokenizer) -> None:
    llm = ScriptedLLM(tokenizer)
    engine = VLLMEngine("tiny", llm=llm, sleep_mode=True)
    engine.generate(["Hi"], SamplingParams(max_tokens=2))
    engine.update_weights({"model.norm.weight": torch.ones(4)})
    assert [entry[0] for entry in llm.log] == [
        "sleep",
        "wake_up",
        "generate",
        "sleep",
        "wake_up",
        "reset_prefix_cache",
        "sleep",
    ]
    assert llm.loaded == ["model.norm.weight"]


def test_lora_adapters_are_versioned_peft_folders(fake_vllm, tokenizer) -> None:
    from safetensors.torch import load_file

    llm = ScriptedLLM(tokenizer)
    engine = VLLMEngine("tiny", llm=llm)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(4, 8)}
    engine.load_adapter(tensors, config)
    first = engine._lora_request
    folder = Path(first.path)
    assert first.lora_int_id == 1 and json.loads((folder / "adapter_config.json").read_text()) == config
    assert torch.equal(load_file(str(folder / "adapter_model.safetensors"))[next(iter(tensors))], torch.ones(4, 8))
    engine.generate(["Hi"], SamplingParams(max_tokens=2))
    assert llm.log[-1][3] is first
    engine.load_adapter(tensors, config)  # the next version replaces the previous one
    assert engine._lora_request.lora_int_id == 2 and ("remove_lora", 1) in llm.log and not folder.exists()
    engine.update_weights({"lm_head.weight": torch.zeros(2)})  # full weights drop the adapter
    assert engine._lora_request is None and ("remove_lora", 2) in llm.log


def test_lora_rank_is_rounded_up_to_what_vllm_accepts() -> None:
    assert [supported_lora_rank(r) for r in (1, 8, 9, 64, 300)] == [8, 8, 16, 64, 320]
    with pytest.raises(ValueError, match="largest"):
        supported_lora_rank(1024)


# -- the real thing (GPU + vllm) --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine():
    engine = VLLMEngine(
        str(TINY_POLICY), dtype="float32", gpu_memory_utilization=0.2, enable_lora=True, max_lora_rank=8
    )
    yield engine
    engine.close()


def _teacher_forced(model: Any, prompt_ids: list[int], completion_ids: list[int], temperature: float) -> torch.Tensor:
    ids = torch.tensor([prompt_ids + completion_ids], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    index = torch.tensor(completion_ids, device=model.device)[:, None]
    return torch.log_softmax(logits, -1).gather(-1, index).squeeze(-1).cpu()


@pytest.mark.vllm
@pytest.mark.gpu
def test_real_vllm_generates_with_logprobs_of_the_model(real_engine: VLLMEngine) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(TINY_POLICY), dtype=torch.float32).cuda()
    params = SamplingParams(n=4, temperature=0.8, max_tokens=24, seed=0)
    groups = real_engine.generate(["Question: Tell me about bees.\nAnswer:"] * 2, params)
    assert [len(g) for g in groups] == [4, 4]
    for sample in groups[0]:
        expected = _teacher_forced(model, sample.prompt_ids, sample.completion_ids, params.temperature)
        torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=2e-3, rtol=0)


@pytest.mark.vllm
@pytest.mark.gpu
def test_real_vllm_full_and_adapter_sync_change_the_logprobs(real_engine: VLLMEngine) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rollout.weight_sync import WeightSync

    params = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=1)
    prompt = ["Question: What do you know about apples?\nAnswer:"]
    learner = AutoModelForCausalLM.from_pretrained(str(TINY_POLICY), dtype=torch.float32).cuda()
    peft_model = get_peft_model(learner, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    for mode in ("adapter", "full"):
        WeightSync(real_engine, mode, shared=False).sync(peft_model)
        for sample in real_engine.generate(prompt, params)[0]:
            expected = _teacher_forced(peft_model, sample.prompt_ids, sample.completion_ids, params.temperature)
            torch.testing.assert_close(torch.tensor(sample.logprobs), expected, atol=2e-3, rtol=0, msg=mode)
