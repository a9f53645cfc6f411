"""Build the bundled preference set `alignment/assets/preference_pairs.jsonl` (for `align eval-rm` examples/tests).

Run as ``python -m tools.preference_pairs`` (deterministic for a seed). For every held-out quickstart prompt
(question, topic, on-topic reference answer) it writes three TRL preference rows whose chosen answer is the
reference and whose rejected answer is one known failure:
- ``off_topic``: another topic's reference answer (a relevance reward should prefer the chosen),
- ``repetitive``: the reference's first sentence repeated three times (relevance alone cannot tell; RP can),
- ``truncated``: the first few words of the reference (length-sensitive rewards prefer the chosen).
The `kind` column says which, so a report can be read per failure type.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "alignment" / "assets"


def build_pairs(rows: list[dict], seed: int = 0) -> list[dict]:
    """Three preference rows per prompt row (see the module docstring); rows need prompt, topic, reference."""
    rng = random.Random(seed)
    pairs = []
    for row in rows:
        others = [r for r in rows if r["topic"] != row["topic"]]
        reference = row["reference"].strip()
        first = reference.split(". ")[0].rstrip(".") + "."
        words = reference.split()
        rejected = {
            "off_topic": rng.choice(others)["reference"].strip(),
            "repetitive": " ".join([first] * 3),
            "truncated": " ".join(words[: max(3, len(words) // 5)]),
        }
        for kind, answer in rejected.items():
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": " " + reference,
                    "rejected": " " + answer,
                    "kind": kind,
                    "topic": row["topic"],
                }
            )
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=str(ASSETS / "quickstart_eval_prompts.jsonl"))
    parser.add_argument("--out", default=str(ASSETS / "preference_pairs.jsonl"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in Path(args.prompts).read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = build_pairs(rows, args.seed)
    Path(args.out).write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    print(f"wrote {len(pairs)} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
