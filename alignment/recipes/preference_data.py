"""TRL preference rows (`prompt`, `chosen`, `rejected`) from local files, checked row by row.

Standard rows hold strings; conversational rows hold lists of {role, content} messages; an implicit-prompt row
has no `prompt` and shares its leading messages between `chosen` and `rejected` (TRL's formats). A row whose
structure is wrong (missing field, wrong type, malformed prompt) stops with a DataError naming the file and row.
A row that is well formed but useless for learning (an empty answer, or chosen == rejected) is skipped and
counted, or rejected when the caller asks for strict checking; so is a row whose prompt alone fills the
learner's token budget (`drop_long_prompts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignment.errors import DataError
from alignment.recipes.prompt_data import check_prompt, read_dataset_rows
from rewards.text import completion_text

OnBad = Literal["skip", "error"]
EXAMPLES_PER_REASON = 5


@dataclass
class PreferenceDataReport:
    """What loading kept and skipped: rows read, rows kept, skips per reason and the first row numbers of each."""

    source: str
    rows: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[int]] = field(default_factory=dict)

    def skip(self, reason: str, row_number: int) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(row_number)

    def summary(self) -> str:
        """One line for the log: kept/read and the skip counts with example rows."""
        parts = [f"{self.kept}/{self.rows} preference rows kept from {self.source}"]
        for reason, count in sorted(self.skipped.items()):
            parts.append(f"{count} skipped ({reason}; rows {', '.join(map(str, self.examples[reason]))}...)")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows": self.rows,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "examples": {k: list(v) for k, v in self.examples.items()},
        }


def split_implicit_prompt(chosen: list[Any], rejected: list[Any]) -> tuple[list, list, list]:
    """TRL's implicit-prompt conversational rows: the leading messages both answers share are the prompt.

    Returns ``(prompt, chosen_tail, rejected_tail)``; at least the last message of each side stays an answer.
    """
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _answer_text(value: Any, where: str, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return completion_text(value)
    raise DataError(f"{where}: {key!r} must be a string or a list of chat messages, got {type(value).__name__}")


def read_preference_rows(
    path: str | Path, on_bad: OnBad = "skip", hint: str = ""
) -> tuple[list[dict[str, Any]], PreferenceDataReport]:
    """Read and check TRL preference rows; every returned row has `prompt`, `chosen` and `rejected`.

    Args:
        path: a .jsonl/.json/.parquet file or a `datasets` folder.
        on_bad: what to do with an empty answer or chosen == rejected: "skip" (count it) or "error".
        hint: appended to the error of a bad row (e.g. the recipe option that would skip it).

    Returns:
        (rows, report). Raises DataError naming the file and row for malformed rows, for a bad row when
        ``on_bad="error"``, and when no row is left.
    """
    path = Path(path)
    raw = read_dataset_rows(path)
    report = PreferenceDataReport(source=str(path), rows=len(raw))
    rows = []
    for number, row in enumerate(raw, start=1):
        where = f"{path}: row {number}"
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where} has no {key!r} field (fields: {sorted(row)})")
        chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
        if prompt is None:
            if not (isinstance(chosen, list) and isinstance(rejected, list)):
                raise DataError(f"{where} has no 'prompt' field and its answers are not conversations")
            prompt, chosen, rejected = split_implicit_prompt(chosen, rejected)
        check_prompt(prompt, where)
        texts = {key: _answer_text(value, where, key) for key, value in (("chosen", chosen), ("rejected", rejected))}
        if isinstance(prompt, str) != isinstance(chosen, str) or isinstance(chosen, str) != isinstance(rejected, str):
            raise DataError(f"{where}: prompt, chosen and rejected must all be strings or all be chat messages")
        reason = None
        empty = [key for key, text in texts.items() if not text.strip()]
        if empty:
            reason, detail = "empty answer", f"{empty[0]!r} is empty"
        elif chosen == rejected:
            reason, detail = "chosen equals rejected", "chosen equals rejected"
        if reason is not None:
            if on_bad == "error":
                raise DataError(f"{where}: {detail}{hint}")
            report.skip(reason, number)
            continue
        rows.append({**row, "prompt": prompt, "chosen": chosen, "rejected": rejected})
    report.kept = len(rows)
    if not rows:
        raise DataError(f"{path}: no usable preference row ({report.summary()})")
    return rows, report


def prompt_token_count(tokenizer: Any, prompt: Any) -> int:
    """Tokens of a prompt as the learner builds it (chat template with generation prompt, or plain text)."""
    if isinstance(prompt, str):
        return len(tokenizer(text=prompt)["input_ids"])
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(ids["input_ids"])


def drop_long_prompts(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int | None, report: PreferenceDataReport, on_long: OnBad
) -> list[dict[str, Any]]:
    """Remove rows whose prompt alone has ``max_length`` tokens or more (nothing of the answer would be left).

    Such rows are counted in ``report`` under "prompt too long", or raise DataError when ``on_long="error"``.
    Row numbers in the report are positions among the rows kept so far (1-based).
    """
    if max_length is None:
        return rows
    kept = []
    for number, row in enumerate(rows, start=1):
        n = prompt_token_count(tokenizer, row["prompt"])
        if n >= max_length:
            if on_long == "error":
                raise DataError(
                    f"{report.source}: pair {number}: the prompt has {n} tokens, preference.max_length is "
                    f"{max_length} (set preference.too_long: skip to skip such rows)"
                )
            report.skip("prompt too long", number)
            continue
        kept.append(row)
    report.kept = len(kept)
    if not kept:
        raise DataError(f"{report.source}: no pair fits preference.max_length={max_length} ({report.summary()})")
    return kept
