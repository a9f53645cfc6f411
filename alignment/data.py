"""Loading TRL-format datasets from local files, with row checks that name the file and the row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, load_from_disk

from alignment.errors import DataError


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        try:
            loaded = load_from_disk(str(path))
        except Exception as err:  # noqa: BLE001 - datasets raises several types
            raise DataError(f"{path}: not a `datasets` directory saved with save_to_disk ({err})") from None
        if not isinstance(loaded, Dataset):
            if "train" not in loaded:
                raise DataError(f"{path}: a DatasetDict without a 'train' split; splits: {list(loaded)}")
            loaded = loaded["train"]
        return [dict(row) for row in loaded]
    if suffix == ".jsonl":
        rows = []
        with open(path, encoding="utf-8", errors="strict") as handle:
            try:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {number} is not a JSON object")
                    rows.append(row)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: a .json dataset must be a list of objects")
        return data
    if suffix == ".parquet":
        return [dict(row) for row in Dataset.from_parquet(str(path))]
    raise DataError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json, .parquet or a datasets dir")


def read_dataset_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a local dataset file or `datasets` folder; DataError if it is missing or has no rows."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset file does not exist")
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: the dataset has no rows")
    return rows


def check_prompt(value: Any, where: str) -> None:
    """A TRL prompt: a non-empty string, or a non-empty list of {'role', 'content'} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty")
        return
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise DataError(f"{where}: message {i} must be an object with 'role' and 'content'")
            if message["role"] not in ("system", "user", "assistant", "tool"):
                raise DataError(f"{where}: message {i} has unknown role {message['role']!r}")
            if not isinstance(message["content"], str | list):
                raise DataError(f"{where}: message {i} content must be a string or a list of parts")
        return
    raise DataError(
        f"{where}: the prompt must be a non-empty string or list of chat messages, got {type(value).__name__}"
    )


def load_prompts(path: str | Path, prompt_column: str = "prompt", max_rows: int | None = None) -> Dataset:
    """Prompt dataset for on-policy training: every row must hold a valid prompt in `prompt_column`.

    Returns a `datasets.Dataset` whose prompt column is named ``prompt``; other columns are kept (they reach
    the reward components as keyword arguments). Raises DataError naming the file and row.
    """
    path = Path(path)
    rows = read_dataset_rows(path)
    if max_rows is not None:
        rows = rows[:max_rows]
    for number, row in enumerate(rows, start=1):
        if prompt_column not in row:
            raise DataError(f"{path}: row {number} has no {prompt_column!r} field (fields: {sorted(row)})")
        check_prompt(row[prompt_column], f"{path}: row {number}")
    if prompt_column != "prompt":
        rows = [{("prompt" if k == prompt_column else k): v for k, v in row.items()} for row in rows]
    try:
        return Dataset.from_list(rows)
    except Exception as err:  # noqa: BLE001 - pyarrow type errors
        raise DataError(f"{path}: rows have inconsistent column types ({err})") from None
