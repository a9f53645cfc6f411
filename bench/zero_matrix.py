"""Every learner under every ZeRO stage, with LoRA and with full fine-tuning: 2 CPU processes each, via launch.sh.

Usage: ``python bench/zero_matrix.py [--out bench/results/zero_matrix.json] [--algorithms grpo,dpo,rpo,sparsepo]``

Runs each recipe of configs/ (grpo.yaml, dpo.yaml, rpo.yaml, sparsepo.yaml) shortened to 3 steps through
``bash launch.sh RECIPE --num_procs 2 --set train.deepspeed=configs/zeroN.json [--set peft.enabled=false]`` and
records, per combination, the exit code, wall time, the steps in metrics.jsonl and whether the final checkpoint
is complete. CI runs four of these combinations as tests (tests/test_distributed.py); this covers the rest.
Writes JSON and prints a table; exits 0 whatever the outcome (a report, not a test).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHORT = {
    "grpo": ["train.prompts_per_step=2", "train.num_generations=4", "rollout.max_new_tokens=16"],
    "dpo": ["train.pairs_per_step=4", "preference.max_length=128"],
    "rpo": ["train.pairs_per_step=4", "preference.max_length=128"],
    "sparsepo": ["train.pairs_per_step=4", "preference.max_length=128"],
}


def run_one(algorithm: str, stage: int, peft: bool, workdir: Path) -> dict[str, object]:
    from alignment.learners.checkpointing import latest_checkpoint

    run = workdir / f"{algorithm}-zero{stage}-{'lora' if peft else 'full'}"
    overrides = [
        "train.max_steps=3",
        "train.save_steps=3",
        "train.report_to=[none]",
        "train.torch_threads=1",
        f"train.deepspeed=configs/zero{stage}.json",
        f"peft.enabled={str(peft).lower()}",
        *SHORT[algorithm],
    ]
    cmd = ["bash", "launch.sh", f"configs/{algorithm}.yaml", "--num_procs", "2", "--output-dir", str(run)]
    for override in overrides:
        cmd += ["--set", override]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - start
    metrics = run / "metrics.jsonl"
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    final = latest_checkpoint(run)
    return {
        "algorithm": algorithm,
        "zero_stage": stage,
        "peft": peft,
        "exit_code": proc.returncode,
        "seconds": round(seconds, 1),
        "steps_logged": steps,
        "final_checkpoint": final.name if final else None,
        "error_tail": proc.stderr.strip().splitlines()[-1] if proc.returncode and proc.stderr.strip() else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "zero_matrix.json")
    parser.add_argument("--algorithms", default="grpo,dpo,rpo,sparsepo")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for algorithm in args.algorithms.split(","):
            for stage in (2, 3):
                for peft in (True, False):
                    result = run_one(algorithm, stage, peft, Path(tmp))
                    results.append(result)
                    ok = result["exit_code"] == 0 and result["final_checkpoint"] == "checkpoint-3"
                    print(
                        f"{algorithm:9s} ZeRO-{stage} {'LoRA' if peft else 'full':4s}  {'ok' if ok else 'FAILED':6s} "
                        f"{result['seconds']:6.1f}s  steps {result['steps_logged']}  {result['error_tail'] or ''}",
                        flush=True,
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
