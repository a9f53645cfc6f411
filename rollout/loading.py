"""Loading a policy for generation: a local model folder, or a PEFT adapter folder (e.g. a run's checkpoint).

Nothing is downloaded: `local_files_only` everywhere. An adapter folder (adapter_config.json, no config.json)
is loaded onto its base model (`base_model_name_or_path`, or `base_model` when given) and merged for speed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DTYPES = ("float32", "bfloat16", "float16")


class ModelLoadError(ValueError):
    """The folder is not a loadable model or adapter; the message says why."""


def is_adapter_dir(path: str | Path) -> bool:
    """Whether `path` holds a PEFT adapter rather than a full model."""
    path = Path(path)
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def adapter_base(path: str | Path, base_model: str | None = None) -> tuple[Path, dict[str, Any]]:
    """(base model folder, adapter config) of the PEFT adapter folder `path`; ModelLoadError when the config is
    unreadable or the base (`base_model`, else the config's `base_model_name_or_path`) is no local model folder."""
    path = Path(path)
    try:
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable adapter_config.json ({err})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: adapter_config.json is not a JSON object")
    base = Path(base_model or config.get("base_model_name_or_path") or "")
    if not (base / "config.json").is_file():
        raise ModelLoadError(f"{path}: adapter whose base model {str(base)!r} is not a local model folder")
    return base, config


def load_policy(
    path: str | Path, *, dtype: str = "float32", trust_remote_code: bool = False, base_model: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) ready for generation: eval mode, a pad token, left padding."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    torch_dtype = getattr(torch, dtype)
    path = Path(path)
    adapter = is_adapter_dir(path)
    if adapter:
        base, _ = adapter_base(path, base_model)
    elif not (path / "config.json").is_file():
        raise ModelLoadError(
            f"{str(path)!r} is not a model folder (no config.json) or adapter (no adapter_config.json)"
        )
    else:
        base = path
    try:
        tokenizer_dir = path if (path / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(
            str(tokenizer_dir), local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(
            str(base),
            dtype=torch_dtype,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
        )
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path), is_trainable=False).merge_and_unload()
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {str(path)!r}: {str(err).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer
