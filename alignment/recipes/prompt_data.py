"""Loading TRL-format datasets from local files, with row checks that name the file and the row.

Whatever a file holds (broken JSON, invalid UTF-8 or lone surrogates, a truncated or garbage Parquet file, rows
of the wrong shape or of mixed types), loading either succeeds or raises one `DataError` line naming the file
and, where there is one, the row and field.
"""

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
                    row = _parse_json(line, f"{path}: line {number}")
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {number} is not a JSON object")
                    rows.append(row)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        return rows
    if suffix == ".json":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
        data = _parse_json(text, str(path))
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: a .json dataset must be a list of objects")
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:  # read directly: no copy in the `datasets` cache
            return pq.read_table(str(path)).to_pylist()
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for damaged files
            raise DataError(f"{path}: not a readable Parquet file ({_first_line(err)})") from None
    raise DataError(f"{path}: unsupported dataset format {suffix!r}; use .jsonl, .json, .parquet or a datasets dir")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _parse_json(text: str, where: str) -> Any:
    """json.loads with every failure (syntax, 4300+ digit integers, nesting too deep) as a DataError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{where} is not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:
        raise DataError(f"{where} is not usable JSON ({_first_line(err)})") from None


def _find_bad_text(value: Any, depth: int = 0) -> str | None:
    """A string inside `value` that is not valid Unicode (a lone surrogate from a JSON escape), shown short."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return repr(value[max(0, err.start - 10) : err.end + 10])
        return None
    if depth > 50:
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _find_bad_text(key, depth + 1) if isinstance(key, str) else None
        found = found or _find_bad_text(item, depth + 1)
        if found:
            return found
    return None


def read_dataset_rows(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a local dataset file or `datasets` folder; DataError if it is missing, unreadable, has no
    rows, or a row holds text that is not valid Unicode (named by row and field)."""
    path = Path(path)
    try:
        if not path.exists():
            raise DataError(f"{path}: dataset file does not exist")
        rows = _read_rows(path)
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or _first_line(err)})") from None
    if not rows:
        raise DataError(f"{path}: the dataset has no rows")
    for number, row in enumerate(rows, start=1):
        for key, value in row.items():
            bad = _find_bad_text(key) or _find_bad_text(value)
            if bad:
                raise DataError(f"{path}: row {number}, field {str(key)[:80]!r}: not valid Unicode text near {bad}")
    return rows


def check_prompt(value: Any, where: str) -> None:
    """A TRL prompt: a non-empty string, or a non-empty list of {'role', 'content'} messages."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty")
        return
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            check_message(message, f"{where}: message {i}")
        return
    raise DataError(
        f"{where}: the prompt must be a non-empty string or list of chat messages, got {type(value).__name__}"
    )


def check_message(message: Any, where: str) -> None:
    """A chat message: {'role': system|user|assistant|tool, 'content': text or a list of typed parts}.

    Parts are objects with a string 'type'; a 'text' part needs a string 'text'.
    """
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise DataError(f"{where} must be an object with 'role' and 'content'")
    role = message["role"]
    if not isinstance(role, str) or role not in ("system", "user", "assistant", "tool"):
        raise DataError(f"{where} has unknown role {str(role)[:40]!r}; use system, user, assistant or tool")
    content = message["content"]
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise DataError(f"{where} content must be a string or a list of parts, got {type(content).__name__}")
    for j, part in enumerate(content):
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise DataError(f"{where} content part {j} must be an object with a string 'type'")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise DataError(f"{where} content part {j} is a text part without a string 'text'")


def first_type_clash(rows: list[dict[str, Any]]) -> str | None:
    """'row N, field F: a list where row M has a str' for the first column whose JSON kinds differ, else None.

    (Arrow needs one type per column; numbers of both kinds and nulls mix fine.)
    """

    def kind(value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return "bool"
        if isinstance(value, int | float):
            return "number"
        return type(value).__name__

    seen: dict[str, tuple[str, int]] = {}
    for number, row in enumerate(rows, start=1):
        for key, value in row.items():
            k = kind(value)
            if k is None:
                continue
            if key in seen and seen[key][0] != k:
                first, first_row = seen[key]
                return f"row {number}, field {str(key)[:80]!r}: a {k} where row {first_row} has a {first}"
            seen.setdefault(key, (k, number))
    return None


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
        clash = first_type_clash(rows)
        detail = clash or f"rows have inconsistent column types ({_first_line(err)})"
        raise DataError(f"{path}: {detail}") from None
