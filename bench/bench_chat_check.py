"""Cost of checking chat prompts against the tokenizer before a run (`alignment.learners.chat_check`).

Usage: ``python bench/bench_chat_check.py [--prompts 10000] [--repeats 3] [--out bench/results/chat_check.json]``

Every distinct conversational prompt is rendered once through the tokenizer's chat template (and, for preference
rows, prompt + chosen and prompt + rejected) before training starts. This measures that up-front cost on the
project's tiny policy tokenizer with a ChatML-style template: `--prompts` distinct two-turn prompts (system +
user, ~30 words), and as many preference rows. Best and median seconds of `--repeats` runs; writes JSON and
prints a table; exits 0 whatever the timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "chat_check.json"))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from alignment.learners.chat_check import check_preference_rendering, check_prompt_rendering
    from alignment.recipes.paths import resolve_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_path("builtin:tiny-policy", None, "model"))
    tokenizer.chat_template = CHATML
    words = [
        "rivers",
        "carry",
        "fresh",
        "water",
        "to",
        "the",
        "sea",
        "and",
        "bees",
        "pollinate",
        "flowers",
        "and",
        "crops",
        "in",
        "spring",
    ]
    prompts = [
        [
            {"role": "system", "content": "You answer briefly and stay on topic."},
            {"role": "user", "content": f"Question {i}: " + " ".join(words[(i + j) % len(words)] for j in range(24))},
        ]
        for i in range(args.prompts)
    ]
    rows = [
        {
            "prompt": p,
            "chosen": [{"role": "assistant", "content": "A short, relevant answer about " + words[i % len(words)]}],
            "rejected": [{"role": "assistant", "content": "Something else entirely, " + words[-1 - i % len(words)]}],
        }
        for i, p in enumerate(prompts)
    ]
    cases = {
        "prompts (GRPO)": lambda: check_prompt_rendering(tokenizer, prompts, "bench"),
        "preference rows (DPO)": lambda: check_preference_rendering(tokenizer, rows, "bench"),
    }
    results = []
    for name, run in cases.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        renders = args.prompts * (1 if name.startswith("prompts") else 3)
        results.append(
            {
                "case": name,
                "items": args.prompts,
                "renders": renders,
                "best_s": min(times),
                "median_s": statistics.median(times),
                "us_per_render": 1e6 * min(times) / renders,
            }
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2) + "\n")
    print(f"{'case':<24} {'items':>7} {'renders':>8} {'best s':>8} {'median s':>9} {'us/render':>10}")
    for r in results:
        print(
            f"{r['case']:<24} {r['items']:>7} {r['renders']:>8} {r['best_s']:>8.2f} {r['median_s']:>9.2f} "
            f"{r['us_per_render']:>10.0f}"
        )
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
