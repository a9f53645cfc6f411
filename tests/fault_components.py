"""Reward components that misbehave on purpose, for the fault-injection tests (used as `fault_components:NAME`).

Which rows misbehave is decided by a CRC of the completion text, so a run is reproducible for a seed. Each
function takes TRL's reward signature; `log` (a file path) records what was injected, one JSON line per event,
so a test can compare the counts in metrics.jsonl with what really happened.
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_calls: dict[str, int] = {}


def _text(completion: Any) -> str:
    if isinstance(completion, list):
        return " ".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in completion)
    return str(completion)


def _bucket(completion: Any, modulo: int) -> int:
    return zlib.crc32(_text(completion).encode("utf-8", "surrogatepass")) % modulo


def _log(path: str | None, event: str, completion: Any) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"event": event, "completion": _text(completion)}) + "\n")


def _words(completion: Any) -> float:
    return float(len(_text(completion).split()))


def flaky(prompts: Sequence[Any], completions: Sequence[Any], log: str | None = None, **_: Any) -> list[float]:
    """Raises ValueError on about 30% of rows (CRC bucket 0-2 of 10); logs each raise made on a single row."""
    values = []
    for completion in completions:
        if _bucket(completion, 10) < 3:
            if len(completions) == 1:
                _log(log, "raise", completion)
            raise ValueError("injected fault: this row cannot be scored")
        values.append(_words(completion))
    return values


def bad_values(prompts: Sequence[Any], completions: Sequence[Any], log: str | None = None, **_: Any) -> list[float]:
    """NaN, +inf or -inf on about 60% of rows (CRC buckets 0, 1, 2 of 5), the word count elsewhere."""
    values = []
    for completion in completions:
        bucket = _bucket(completion, 5)
        value = [math.nan, math.inf, -math.inf][bucket] if bucket < 3 else _words(completion)
        if bucket < 3:
            _log(log, "non-finite", completion)
        values.append(value)
    return values


def huge_values(prompts: Sequence[Any], completions: Sequence[Any], log: str | None = None, **_: Any) -> list[float]:
    """+1e308 or -1e308 (finite, but far beyond any reward scale) on about half of the rows (CRC buckets 0 and 1
    of 4), the word count elsewhere."""
    values = []
    for completion in completions:
        bucket = _bucket(completion, 4)
        if bucket < 2:
            _log(log, "huge", completion)
            values.append(1e308 if bucket == 0 else -1e308)
        else:
            values.append(_words(completion))
    return values


def nan_everywhere(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """NaN on every row: a component that is broken, not one that does not apply (that would return None)."""
    return [math.nan for _ in completions]


def nan_after_first_call(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """Word counts on the first call of the process, NaN on every row after that (a reward that breaks mid-run,
    while a progress bar is on the screen)."""
    _calls["nan_after_first_call"] = _calls.get("nan_after_first_call", 0) + 1
    if _calls["nan_after_first_call"] == 1:
        return [_words(c) for c in completions]
    return [math.nan for _ in completions]


def hangs(prompts: Sequence[Any], completions: Sequence[Any], log: str | None = None, **_: Any) -> list[float]:
    """Hangs (sleeps for an hour) on every batch call and on single rows in CRC bucket 0 of 4; else word counts."""
    if len(completions) > 1 or _bucket(completions[0], 4) == 0:
        _log(log, "hang", completions[0] if len(completions) == 1 else "<batch>")
        time.sleep(3600)
    return [_words(c) for c in completions]


def hang_forever(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """Never returns: waits on an event nobody sets."""
    threading.Event().wait()
    return [0.0 for _ in completions]


def gate(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    gate_path: str = "",
    block_on_call: int = 2,
    wait_seconds: float = 120.0,
    **_: Any,
) -> list[float]:
    """Word counts; on call number `block_on_call` waits (up to `wait_seconds`) until `gate_path` exists.

    Lets a test change the world (fill the disk) at a known point of a run: after the first step's checkpoint.
    """
    _calls[gate_path] = _calls.get(gate_path, 0) + 1
    if _calls[gate_path] == block_on_call:
        deadline = time.monotonic() + wait_seconds
        while not Path(gate_path).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    return [_words(c) for c in completions]


PROMPTS = [f"Question: Tell me about {topic}.\nAnswer:" for topic in ("bread", "rivers", "bees", "snow")]


def write_tiny_recipe(
    folder: Path,
    model_dir: Path,
    *,
    max_steps: int,
    save_steps: int = 1,
    objectives: str = "- {name: length, component: length, args: {unit: words, mode: target, target: 4}}",
    extra_train: str = "",
    num_generations: int = 2,
) -> Path:
    """A tiny GRPO recipe (2 prompts x `num_generations` samples, 8 new tokens, 1 torch thread) in `folder`."""
    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    objectives = "\n".join("    " + line for line in objectives.strip().splitlines())
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"""seed: 11
model: {{path: {model_dir}}}
data: {{train: {data}}}
rollout: {{max_new_tokens: 8}}
rewards:
  objectives:
{objectives}
train:
  max_steps: {max_steps}
  prompts_per_step: 2
  num_generations: {num_generations}
  save_steps: {save_steps}
  save_total_limit: 2
  learning_rate: 1.0e-3
  beta: 0.04
  report_to: [none]
  torch_threads: 1
  {extra_train}
""",
        encoding="utf-8",
    )
    return recipe


REPO = Path(__file__).resolve().parent.parent


def cli_env() -> dict[str, str]:
    """Environment for `python -m alignment.cli` subprocesses: the repo and tests/ importable, offline, 1 thread."""
    import os

    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def metrics_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of a run's metrics.jsonl (each must be valid JSON: a torn line fails the test)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_checkpoints(run_dir: Path) -> list[Path]:
    """Assert that every checkpoint-N folder of a run is complete and loadable; return them, oldest first.

    Complete: the COMPLETE marker names step N and files that all exist; the adapter loads with safetensors;
    trainer_state.json parses and says step N.
    """
    from safetensors.torch import load_file

    from alignment.learners.checkpointing import COMPLETE_MARKER, checkpoint_step, complete_checkpoints

    folders = sorted((p for p in run_dir.glob("checkpoint-*") if p.is_dir()), key=checkpoint_step)
    assert folders == complete_checkpoints(run_dir), f"incomplete checkpoint folders in {run_dir}: {folders}"
    for folder in folders:
        step = checkpoint_step(folder)
        marker = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))
        assert marker["step"] == step
        assert all((folder / name).is_file() for name in marker["files"])
        assert load_file(str(folder / "adapter_model.safetensors")), folder
        assert json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))["global_step"] == step
    return folders


def unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create anything in, or None where there is none (root ignores modes)."""
    import os

    if not os.access("/proc/self", os.W_OK):
        return Path("/proc/self")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        return locked
    return None


def record_result(name: str, data: Any) -> None:
    """Append `{name: data}` to the JSONL file named by $RELIABILITY_REPORT (how RELIABILITY.md gets its
    numbers: `RELIABILITY_REPORT=/tmp/r.jsonl pytest tests/test_faults.py ...`); does nothing when unset."""
    import os

    path = os.environ.get("RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"test": name, **data}, default=str) + "\n")
