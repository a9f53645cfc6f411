"""What a rollout request's body may hold: prompts (strings or chat messages), sampling parameters, and
safetensors weights (finite, by name). Each check raises `HTTPError(400, one line)`."""

from __future__ import annotations

import math
import os
from typing import Any

from rollout.http_transport import Body, HTTPError, one_line
from rollout.weight_sync import from_safetensors_bytes

MIN_TEMPERATURE = 1e-5  # sampling is greedy in effect below this (vLLM's cut too); far below, logits / T overflow


def validate_prompts(value: Any) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise HTTPError(400, "'prompts' must be a non-empty list of strings or chat message lists")
    for i, prompt in enumerate(value):
        if isinstance(prompt, str):
            if not prompt:
                raise HTTPError(400, f"prompts[{i}] is empty")
            continue
        if (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and is_content(m.get("content")) for m in prompt
            )
        ):
            continue
        raise HTTPError(400, f"prompts[{i}] must be a string or a list of {{role, content}} messages")
    return value


def check_strings(payload: Any) -> None:
    """400 for a string the tokenizer cannot take: JSON allows lone UTF-16 surrogates (\\ud800), UTF-8 does not."""
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise HTTPError(400, f"the string {item[:40]!r} is not valid Unicode (a lone surrogate)") from None
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())


def is_content(value: Any) -> bool:
    """A chat message's content: a string, or a list of typed parts ({"type": "text", "text": str}, ...)."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("type"), str) for p in value)


def check_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise HTTPError(400, f"params: must be an object, got {type(params).__name__}")
    temperature = params.get("temperature")
    if (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE)
    ):
        raise HTTPError(400, f"params: temperature must be a finite number >= {MIN_TEMPERATURE}, got {temperature}")
    return params


def check_finite(tensors: dict[str, Any], what: str) -> None:
    import torch

    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise HTTPError(400, f"{what}: {name} holds {bad} NaN/inf value(s); non-finite weights are refused")


def safetensors_file(path: str) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
    if size < 8:
        raise ValueError("not a safetensors payload (shorter than its 8-byte header length)")
    if int.from_bytes(head, "little") > size - 8:
        raise ValueError("not a safetensors payload (header length past the end)")
    try:
        with safe_open(path, framework="pt") as reader:
            metadata = reader.metadata() or {}
            tensors = {name: reader.get_tensor(name) for name in reader.keys()}  # noqa: SIM118
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ValueError(f"not a valid safetensors payload: {err}") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def body_safetensors(body: Body) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a received safetensors body; 400 for anything that is not safetensors."""
    try:
        if body.path is None:
            return from_safetensors_bytes(bytes(body.data))
        return safetensors_file(body.path)
    except ValueError as err:
        raise HTTPError(400, one_line(str(err), 500)) from None
