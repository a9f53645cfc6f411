"""The vLLM engine: `vllm.LLM` in this process (colocated with the learner), behind the RolloutEngine interface.

Thin on purpose; what it relies on from vLLM (>= 0.11) is its documented offline API:
- `LLM(model=..., dtype=..., gpu_memory_utilization=..., enable_lora=..., max_lora_rank=..., max_loras=1,
  enable_sleep_mode=..., logprobs_mode="processed_logprobs", seed=...)`;
- `LLM.generate([{"prompt_token_ids": ids}, ...], SamplingParams(n, temperature, top_p, top_k, max_tokens,
  stop, seed, logprobs=0), lora_request=LoRARequest(name, int_id, path), use_tqdm=False)`, whose outputs
  carry `outputs[i].text`, `.token_ids`, `.logprobs` (one {token_id: Logprob} per position) and `.finish_reason`;
- `LLM.apply_model(fn)` to load full weights with the model's own `load_weights` (Hugging Face names), then
  `LLM.reset_prefix_cache()` so no cached prefix outlives the old weights;
- LoRA: each adapter version is written as a PEFT folder (safetensors + adapter_config.json) and used through a
  new `LoRARequest` id; the previous one is removed;
- `LLM.sleep(level=1)` / `LLM.wake_up()` around generation when `sleep_mode` shares the GPU with the learner.

Logprobs: with `logprobs_mode="processed_logprobs"` vLLM returns log-probabilities after temperature scaling
(and, depending on the vLLM version, after top-k/top-p), the quantity TRL's importance-sampling correction
expects. With top_k = 0 and top_p = 1 that equals the transformers engine's `Sample.logprobs` contract.
The model lives in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as TRL's colocate mode runs it), so
`apply_model` passes weights by reference.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollout.base import Prompt, PromptLimit, Sample, SamplingParams, Truncation

logger = logging.getLogger("rollout")

VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def supported_lora_rank(rank: int) -> int:
    """The smallest LoRA rank vLLM accepts as `max_lora_rank` that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


class VLLMEngine:
    """Generates with `vllm.LLM` (see the module docstring); takes full-weight and LoRA-adapter updates."""

    name = "vllm"

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        enable_lora: bool = False,
        max_lora_rank: int = 16,
        sleep_mode: bool = False,
        seed: int = 0,
        max_prompt_tokens: int | None = None,
        prompt_truncation: Truncation = "left",
        trust_remote_code: bool = False,
        llm_options: dict[str, Any] | None = None,
        llm: Any = None,
    ) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if llm is None:
            from vllm import LLM

            options: dict[str, Any] = {
                "model": model_path,
                "dtype": dtype,
                "gpu_memory_utilization": gpu_memory_utilization,
                "enable_sleep_mode": sleep_mode,
                "logprobs_mode": "processed_logprobs",
                "seed": seed,
                "trust_remote_code": trust_remote_code,
            }
            if max_model_len is not None:
                options["max_model_len"] = max_model_len
            if enable_lora:
                options.update(enable_lora=True, max_lora_rank=supported_lora_rank(max_lora_rank), max_loras=1)
            options.update(llm_options or {})
            llm = LLM(**options)
        self.llm = llm
        self.model_path = model_path
        self.tokenizer = llm.get_tokenizer()
        self.prompt_limit = PromptLimit(max_prompt_tokens, prompt_truncation)
        self.truncated_prompts = 0
        self.sleep_mode = sleep_mode
        self._sleeping = False
        self._lora_ids = itertools.count(1)
        self._lora_request: Any = None
        self._lora_dir: Path | None = None
        if sleep_mode:
            self._sleep()

    @property
    def context_length(self) -> int | None:
        """vLLM's max_model_len for this model."""
        config = getattr(self.llm, "model_config", None) or getattr(self.llm.llm_engine, "model_config", None)
        value = getattr(config, "max_model_len", None)
        return int(value) if isinstance(value, int) else None

    # -- sleep / wake (GPU memory shared with the learner) ---------------------------------------------------
    def _sleep(self) -> None:
        if self.sleep_mode and not self._sleeping:
            self.llm.sleep(level=1)  # level 1 keeps the weights in CPU memory: the base survives adapter syncs
            self._sleeping = True

    def _wake(self) -> None:
        if self._sleeping:
            self.llm.wake_up()
            self._sleeping = False

    # -- generation ------------------------------------------------------------------------------------------
    def _sampling_params(self, params: SamplingParams) -> Any:
        from vllm import SamplingParams as VLLMSamplingParams

        return VLLMSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0,  # the sampled token's logprob only
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample `params.n` completions per prompt; one list of samples per prompt, in order."""
        from rollout.transformers_engine import tokenize_prompt

        prompt_ids = [tokenize_prompt(self.tokenizer, p) for p in prompts]
        prompt_ids, truncated = self.prompt_limit.apply(prompt_ids, self.context_length, params.max_tokens)
        self.truncated_prompts += truncated
        self._wake()
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_ids],
                self._sampling_params(params),
                lora_request=self._lora_request,
                use_tqdm=False,
            )
        finally:
            self._sleep()
        return [
            [self._to_sample(ids, completion) for completion in output.outputs]
            for ids, output in zip(prompt_ids, outputs)
        ]

    @staticmethod
    def _to_sample(prompt_ids: list[int], completion: Any) -> Sample:
        token_ids = [int(t) for t in completion.token_ids]
        logprobs = []
        for position, token in zip(completion.logprobs or [], token_ids):
            entry = position[token]
            logprobs.append(float(getattr(entry, "logprob", entry)))
        if len(logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(token_ids)} tokens")
        return Sample(
            text=completion.text,
            prompt_ids=list(prompt_ids),
            completion_ids=token_ids,
            logprobs=logprobs,
            finish_reason="length" if completion.finish_reason == "length" else "stop",
        )

    # -- weight updates --------------------------------------------------------------------------------------
    def update_weights(self, tensors: dict[str, Any]) -> None:
        """Load full weights (Hugging Face names) with the model's `load_weights`; drops any adapter."""
        items = list(tensors.items())
        self._wake()
        try:
            self.llm.apply_model(lambda model: model.load_weights(weights=iter(items)))
            self.llm.reset_prefix_cache()
        finally:
            self._sleep()
        self._drop_adapter()

    def load_adapter(self, tensors: dict[str, Any], config: dict[str, Any]) -> None:
        """Generate with this LoRA adapter from now on: written as a PEFT folder and used via a new LoRARequest."""
        from safetensors.torch import save_file
        from vllm.lora.request import LoRARequest

        folder = Path(tempfile.mkdtemp(prefix="align-lora-"))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
        lora_id = next(self._lora_ids)
        self._drop_adapter()
        self._lora_request = LoRARequest(f"policy-{lora_id}", lora_id, str(folder))
        self._lora_dir = folder

    def _drop_adapter(self) -> None:
        if self._lora_request is not None:
            remove = getattr(self.llm.llm_engine, "remove_lora", None)
            if remove is not None:
                remove(self._lora_request.lora_int_id)
            self._lora_request = None
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
            self._lora_dir = None

    def close(self) -> None:
        """Remove the adapter folder written for vLLM."""
        self._drop_adapter()
