"""Chat prompts checked against the tokenizer before anything runs.

Conversational rows (lists of {role, content} messages) reach the model through the tokenizer's chat template,
which the model folder ships (or does not). A tokenizer without a template, or a template that rejects the
messages (roles it does not know, an order it forbids, content it cannot print), would otherwise fail only once
training or sampling has started. Here every distinct conversational prompt (and for preference rows every
prompt + answer, as TRL renders them) goes through the same chat template call as the rollout worker and TRL
(`rollout.transformers_engine.render_chat_text`: the text only, since templates fail while rendering, not while
tokenizing), and the first one that fails stops with one DataError line naming the file, the row and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError, DataError
from rollout.base import PromptRenderError


def _key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, default=str, ensure_ascii=False)


def _render(tokenizer: Any, messages: list[Any], *, add_generation_prompt: bool) -> None:
    from rollout.transformers_engine import render_chat_text

    render_chat_text(tokenizer, messages, add_generation_prompt=add_generation_prompt)


def _error(source: str | Path, row: int, field: str, err: PromptRenderError, tokenizer: Any) -> DataError:
    name = getattr(tokenizer, "name_or_path", "") or ""
    shown = f" (tokenizer {str(name)!r})" if name else ""
    return DataError(f"{source}: row {row}, field {field!r}: {err}{shown}")


def check_prompt_rendering(tokenizer: Any, prompts: Sequence[Any], source: str | Path) -> None:
    """Render every distinct conversational prompt once with the chat template and the generation prompt;
    DataError naming `source`, the row (1-based position in `prompts`) and the field for the first that fails.
    Plain-text prompts need no template and are not rendered."""
    seen: set[str] = set()
    for row, prompt in enumerate(prompts, start=1):
        if not isinstance(prompt, list):
            continue
        key = _key(prompt)
        if key in seen:
            continue
        seen.add(key)
        try:
            _render(tokenizer, prompt, add_generation_prompt=True)
        except PromptRenderError as err:
            raise _error(source, row, "prompt", err, tokenizer) from None


def _file_row(source: str | Path, failing: dict[str, Any], fallback: int) -> int:
    """The 1-based row of `source` that holds the preference row `failing` (rows may have been skipped while
    reading, so positions differ); `fallback` when it cannot be found."""
    from alignment.recipes.preference_data import split_implicit_prompt
    from alignment.recipes.prompt_data import read_dataset_rows

    try:
        raw = read_dataset_rows(source)
    except DataError:
        return fallback
    target = _key([failing["prompt"], failing["chosen"], failing["rejected"]])
    for number, row in enumerate(raw, start=1):
        prompt, chosen, rejected = row.get("prompt"), row.get("chosen"), row.get("rejected")
        if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        if _key([prompt, chosen, rejected]) == target:
            return number
    return fallback


def check_preference_rendering(tokenizer: Any, rows: Sequence[dict[str, Any]], source: str | Path) -> None:
    """Render each conversational preference row as TRL's DPOTrainer does: the prompt with the generation prompt
    (each distinct prompt once), and prompt + chosen, prompt + rejected; DataError naming `source`, the file row
    and the field ('prompt', 'chosen' or 'rejected') for the first that fails."""
    seen: set[str] = set()
    for position, row in enumerate(rows, start=1):
        prompt = row["prompt"]
        if not isinstance(prompt, list):
            continue
        key = _key(prompt)
        attempts: list[tuple[str, list[Any], bool]] = [] if key in seen else [("prompt", prompt, True)]
        seen.add(key)
        attempts += [(field, prompt + list(row[field]), False) for field in ("chosen", "rejected")]
        for field, messages, generation_prompt in attempts:
            try:
                _render(tokenizer, messages, add_generation_prompt=generation_prompt)
            except PromptRenderError as err:
                raise _error(source, _file_row(source, row, position), field, err, tokenizer) from None


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a local model folder (nothing downloaded); ConfigError naming it if it cannot load.
    For checks that must run before the model itself is loaded (iterative rounds, a sweep's evaluation set)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.path: cannot load the tokenizer of {path!r}: {str(err).splitlines()[0]}") from None
