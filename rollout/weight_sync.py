"""Weight sync from the learner to an engine that holds its own copy of the policy (vLLM, a rollout server).

Two modes (`resolve_sync_mode`):
- `full`: every weight, by its Hugging Face name. With PEFT the adapter is merged into a copy of the base
  weights first (the learner's model is left unmerged). Under ZeRO-3 the caller gathers the parameters first
  (`alignment.grpo` does it inside TRL's `unwrap_model_for_generation`).
- `adapter` (PEFT only): the LoRA tensors and the adapter config; the engine keeps its base weights and applies
  the adapter (vLLM's LoRA support, or PEFT behind the rollout server). Far fewer bytes than `full`.

Payloads travel as safetensors (never pickle); `to_safetensors_bytes` / `from_safetensors_bytes` carry an optional
string metadata map (the adapter config goes there as JSON).
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rollout.base import WeightReceiver

SyncMode = Literal["full", "adapter"]
ADAPTER_CONFIG_KEY = "adapter_config"


def is_peft_model(model: Any) -> bool:
    """Whether `model` is a PEFT-wrapped model (has adapters and a base model)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def resolve_sync_mode(requested: str, uses_peft: bool) -> SyncMode:
    """`auto` -> `adapter` with PEFT, else `full`; `adapter` without PEFT is a ValueError."""
    if requested == "auto":
        return "adapter" if uses_peft else "full"
    if requested == "adapter" and not uses_peft:
        raise ValueError("adapter-only weight sync needs a PEFT (LoRA) policy; use full or auto")
    if requested not in ("full", "adapter"):
        raise ValueError(f"weight sync mode must be auto, full or adapter, got {requested!r}")
    return requested  # type: ignore[return-value]


def _base_name(name: str) -> str:
    """A PEFT parameter name as the plain model names it (no PEFT prefix, no `.base_layer`)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


@torch.no_grad()
def full_weights(model: Any) -> dict[str, torch.Tensor]:
    """Every parameter of the policy by its Hugging Face name, on CPU, contiguous.

    A PEFT model's adapter is merged into the copies (merge, copy, unmerge), so the result is what a merged
    checkpoint would hold; the learner's own weights are unchanged afterwards. LoRA and other adapter tensors
    are left out.
    """
    if not is_peft_model(model):
        return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in model.named_parameters()}
    model.merge_adapter()
    try:
        out = {}
        for name, p in model.named_parameters():
            if "lora_" in name or ".modules_to_save." in name:
                continue
            out[_base_name(name)] = p.detach().to("cpu", copy=True).contiguous()
        return out
    finally:
        model.unmerge_adapter()


def _jsonable(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@torch.no_grad()
def adapter_weights(model: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The active LoRA adapter: (tensors as `get_peft_model_state_dict` names them, on CPU; config as a dict)."""
    from peft import get_peft_model_state_dict

    if not is_peft_model(model):
        raise ValueError("adapter weights need a PEFT model")
    name = getattr(model, "active_adapter", "default")
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in get_peft_model_state_dict(model).items()}
    config = _jsonable(model.peft_config[name].to_dict())
    return tensors, json.loads(json.dumps(config))


def to_safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors (and string metadata) to safetensors bytes."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def from_safetensors_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); ValueError on anything that is not safetensors."""
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("not a safetensors payload (shorter than its 8-byte header length)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError("not a safetensors payload (header length past the end)")
    try:
        header = json.loads(data[8 : 8 + header_len])
        tensors = load(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"not a valid safetensors payload: {err}") from None
    metadata = header.get("__metadata__") or {}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def payload_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of tensor data (what a sync moves, headers aside)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


@dataclass
class SyncStats:
    """One sync: mode, wall seconds (collecting + sending + loading), tensors and bytes moved."""

    mode: SyncMode
    seconds: float
    tensors: int
    bytes: int


class WeightSync:
    """Pushes the learner's policy to an engine after each update: `sync(model) -> SyncStats`.

    `shared` says whether one engine serves every learner process (a rollout server: only the main process
    pushes) or each process holds its own (colocated vLLM: every process pushes to its own).
    """

    def __init__(self, engine: WeightReceiver, mode: SyncMode, *, shared: bool) -> None:
        if mode not in ("full", "adapter"):
            raise ValueError(f"weight sync mode must be full or adapter, got {mode!r}")
        self.engine = engine
        self.mode: SyncMode = mode
        self.shared = shared
        self.history: list[SyncStats] = []

    def sync(self, model: Any) -> SyncStats:
        """Send `model`'s weights (full, or the adapter only) to the engine; returns what it cost."""
        start = time.perf_counter()
        if self.mode == "adapter":
            tensors, config = adapter_weights(model)
            self.engine.load_adapter(tensors, config)
        else:
            tensors = full_weights(model)
            self.engine.update_weights(tensors)
        stats = SyncStats(self.mode, time.perf_counter() - start, len(tensors), payload_bytes(tensors))
        self.history.append(stats)
        return stats

    __call__ = sync
