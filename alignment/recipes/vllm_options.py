"""Which `rollout.vllm_options` a recipe may pass to `vllm.LLM(...)`: an allow-list of plain tuning settings.

vLLM's constructor also takes settings that import code by name (`worker_cls`, `worker_extension_cls`,
`logits_processors`, a compilation backend, KV-connector module paths), load other models or files (`tokenizer`,
`speculative_config`, `load_format`, `download_dir`, `hf_overrides`) or turn on `trust_remote_code` behind the
recipe's back. A recipe names none of those: only the keys below, each with a value of its plain type. The settings
the recipe already has a field for are refused with that field's name.
"""

from __future__ import annotations

import math
import re
from typing import Any

from alignment.errors import ConfigError

# key -> the kind of value: "int" (> 0), "size" (>= 0 int), "float" (>= 0, finite), "bool", "name" (a short word),
# or a tuple of the allowed strings.
ALLOWED_VLLM_OPTIONS: dict[str, Any] = {
    "max_model_len": "int",
    "max_num_seqs": "int",
    "max_num_batched_tokens": "int",
    "max_logprobs": "int",
    "block_size": "int",
    "tensor_parallel_size": "int",
    "pipeline_parallel_size": "int",
    "data_parallel_size": "int",
    "max_seq_len_to_capture": "int",
    "max_cudagraph_capture_size": "int",
    "kv_cache_memory_bytes": "int",
    "swap_space": "float",
    "cpu_offload_gb": "float",
    "enforce_eager": "bool",
    "enable_prefix_caching": "bool",
    "enable_chunked_prefill": "bool",
    "enable_expert_parallel": "bool",
    "disable_custom_all_reduce": "bool",
    "disable_log_stats": "bool",
    "async_scheduling": "bool",
    "kv_cache_dtype": "name",
    "quantization": "name",
    "distributed_executor_backend": ("mp", "uni", "ray", "external_launcher"),
    "tokenizer_mode": ("auto", "slow", "mistral"),
}
# vLLM settings the recipe sets from its own fields.
RECIPE_FIELDS = {
    "model": "model.path",
    "dtype": "model.dtype",
    "trust_remote_code": "model.trust_remote_code",
    "gpu_memory_utilization": "rollout.gpu_memory_utilization",
    "enable_sleep_mode": "rollout.sleep_mode",
    "seed": "seed",
    "enable_lora": "rollout.weight_sync",
    "max_lora_rank": "peft.r",
    "max_loras": "rollout.weight_sync",
    "logprobs_mode": "(fixed: the learner needs processed log-probabilities)",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_vllm_options(options: dict[str, Any], where: str) -> None:
    """ConfigError naming `where.key` for a key outside the allow-list or a value of the wrong kind."""
    for key, value in options.items():
        field = f"{where}.{key}"
        if key in RECIPE_FIELDS:
            raise ConfigError(f"{field}: set by the recipe, not here: use {RECIPE_FIELDS[key]}")
        kind = ALLOWED_VLLM_OPTIONS.get(key)
        if kind is None:
            shown = key if len(key) <= 60 else key[:57] + "..."
            raise ConfigError(
                f"{where}: {shown!r} is not an allowed vLLM option (settings that import code or load models or "
                f"files are refused); allowed: {', '.join(sorted(ALLOWED_VLLM_OPTIONS))}"
            )
        if not _fits(kind, value):
            raise ConfigError(f"{field}: {_expected(kind)}, got {_shown(value)}")


def _fits(kind: Any, value: Any) -> bool:
    if isinstance(kind, tuple):
        return value in kind
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int) and 0 < value < 2**63
    if kind == "float":
        if isinstance(value, int):
            return 0 <= value < 2**63  # (math.isfinite overflows on a 400-digit integer)
        return isinstance(value, float) and math.isfinite(value) and 0 <= value < 2**63
    return isinstance(value, str) and bool(_NAME.match(value))  # "name"


def _expected(kind: Any) -> str:
    if isinstance(kind, tuple):
        return f"choose one of {', '.join(repr(k) for k in kind)}"
    return {
        "int": "expected a positive integer",
        "float": "expected a number >= 0",
        "bool": "expected true or false",
        "name": "expected a short name such as fp8",
    }[kind]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
