"""Iterative on-policy preference training: rounds of sample -> pairs -> DPO / RPO / SparsePO -> sync.

Round r (1-based) in `RUN_DIR/round-r/`:

1. sample: the current policy (base model + the adapter trained so far) generates `iterative.n` completions per
   prompt with the rollout worker (transformers, or vLLM with `rollout.engine: vllm`); the `rewards` composer
   scores them (`alignment.learners.onpolicy_pairs`). Written atomically: `samples.jsonl` (every sample with its
   per-objective scores), `pairs.jsonl` (TRL rows: chosen = best, rejected = worst by the composite, ties skipped),
   `sample_stats.json`.
2. train: an ordinary preference run folder `round-r/train/` of `iterative.steps_per_round` steps on those pairs,
   continuing the previous round's adapter (TRL then keeps a frozen copy of it as the reference, so each round is
   regularised towards the policy that sampled its pairs).
3. sync: the next round samples from the new adapter (the engine loads it: nothing to push).

`RUN_DIR/metrics.jsonl` gets one line per round (`step` = round): the samples' mean composite and per-objective
scores (on-policy, before that round's training), pair counts, and the round's last training metrics. A round
is finished once `round-r/ROUND_COMPLETE` exists; `--resume` skips finished rounds and resumes an unfinished
round's training from its newest checkpoint (its pairs are reused when they were written).

Under a launcher (`deepspeed`, several processes, one node or several): every rank samples its share of a
round's generate calls (the calls, their prompts and seeds are those of one process, see
`onpolicy_pairs.sample_shard`), the scored samples are gathered to every rank, rank 0 writes the round's files,
and the round trains as an ordinary multi-process run under the recipe's DeepSpeed config. Rank 0 decides what is
done and what resumes (its view is broadcast), so every rank takes the same path. The run folder must be one
folder every rank sees (a shared filesystem across nodes).

Before anything is written, the composer is built and the sampling prompts are read and rendered with the
policy's tokenizer (chat prompts need a template that accepts them). A fresh run then marks RUN_DIR as an
iterative run folder (`alignment.outputs`) and writes its config.yaml; a resumed one rewrites config.yaml and cuts
metrics.jsonl back only once its first round has finished, so a resume refused on the way changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError, DataError
from alignment.io import MetricsWriter, atomic_write_json, atomic_write_jsonl
from alignment.learners.chat_check import check_prompt_rendering, load_tokenizer
from alignment.learners.factory import build_composer, load_model_and_tokenizer
from alignment.learners.onpolicy_pairs import merge_shards, sample_shard
from alignment.learners.rank_group import RankGroup
from alignment.learners.run import METRICS_FILE, RunResult, run_training, write_run_files
from alignment.outputs import is_run_folder
from alignment.recipes.prompt_data import load_prompts
from alignment.recipes.recipe import Recipe
from rollout.factory import build_sampling_engine

ROUND_MARKER = "ROUND_COMPLETE"


def round_recipe(recipe: Recipe, round_dir: Path, adapter: str | None, policy_path: str) -> Recipe:
    """The preference run of one round: the round's pairs, the previous adapter (or weights), steps_per_round."""
    return dataclasses.replace(
        recipe,
        output_dir=str(round_dir / "train"),
        seed=recipe.seed,
        model=dataclasses.replace(recipe.model, path=policy_path, adapter=adapter),
        data=dataclasses.replace(recipe.data, train=str(round_dir / "pairs.jsonl"), max_rows=None),
        iterative=dataclasses.replace(recipe.iterative, rounds=0),
        train=dataclasses.replace(recipe.train, max_steps=recipe.iterative.steps_per_round),
    )


def _sample_round(
    recipe: Recipe, round_dir: Path, round_index: int, policy: Recipe, composer: Any, ranks: RankGroup
) -> dict[str, Any]:
    it = recipe.iterative
    dataset = load_prompts(str(it.prompts), recipe.data.prompt_column, it.max_prompts)
    prompts = list(dataset["prompt"])
    columns = {c: list(dataset[c]) for c in dataset.column_names if c != "prompt"}

    def sample_this_rank() -> Any:
        try:  # rollout.engine vllm: the policy (base + adapter so far) in vLLM; None: the transformers engine
            engine = build_sampling_engine(
                recipe.rollout,
                policy.model.path,
                adapter=policy.model.adapter,
                dtype=recipe.model.dtype,
                seed=recipe.seed,
            )
        except ValueError as err:
            raise ConfigError(f"rollout: {err}") from None
        if engine is None:
            model, tokenizer = load_model_and_tokenizer(policy)
            model.eval()
        else:
            model, tokenizer = engine, None
        params = recipe.rollout.sampling_params(seed=recipe.seed * 1000 + round_index)
        try:
            return sample_shard(
                model, tokenizer, prompts, composer, it.n, params, it.pairs, columns=columns,
                batch_size=recipe.rollout.batch_size, progress=ranks.is_main, shard=(ranks.rank, ranks.world),
            )  # fmt: skip
        finally:
            if engine is not None:
                engine.close()  # its memory goes back before the round trains

    samples, rows, stats = merge_shards(ranks.run_everywhere(sample_this_rank), len(prompts), composer, it.pairs)
    if not rows:
        raise DataError(
            f"iterative round {round_index}: no preference pair could be built from {len(samples)} samples "
            f"(every group tied: {stats['skipped']}); raise rollout.temperature or change the rewards"
        )
    if ranks.is_main:
        round_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_jsonl(round_dir / "samples.jsonl", samples)
        atomic_write_json(round_dir / "sample_stats.json", stats)
        atomic_write_jsonl(round_dir / "pairs.jsonl", rows)  # written last: its presence means sampling finished
    ranks.barrier()  # the round's training reads pairs.jsonl on every rank
    return stats


def _finished_rounds(run_dir: Path, recipe: Recipe) -> tuple[str, str | None, int]:
    """(policy path, adapter, number of rounds finished) from the round markers in `run_dir`."""
    policy_path, adapter = recipe.model.path, recipe.model.adapter
    finished = 0
    for r in range(1, recipe.iterative.rounds + 1):
        marker = run_dir / f"round-{r}" / ROUND_MARKER
        if not marker.is_file():
            break
        done = json.loads(marker.read_text(encoding="utf-8"))
        policy_path, adapter, finished = done["policy_path"], done["adapter"], r
    return policy_path, adapter, finished


def _last_train_metrics(train_dir: Path) -> dict[str, Any]:
    path = train_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    records = MetricsWriter(path).read()
    return {k: v for k, v in records[-1].items() if isinstance(v, int | float)} if records else {}


def run_iterative(recipe: Recipe, run_dir: Path, resume: bool) -> RunResult:
    """Run `recipe.iterative.rounds` rounds (see the module docstring); returns a `RunResult`."""
    ranks = RankGroup(recipe)
    composer = build_composer(recipe)
    it = recipe.iterative
    prompts = load_prompts(str(it.prompts), recipe.data.prompt_column, it.max_prompts)["prompt"]
    check_prompt_rendering(load_tokenizer(recipe.model.path, recipe.model.trust_remote_code), prompts, it.prompts)
    if not resume and ranks.is_main:
        write_run_files(run_dir, recipe)
    writer = MetricsWriter(run_dir / METRICS_FILE)
    policy_path, adapter, finished = ranks.broadcast(_finished_rounds(run_dir, recipe) if ranks.is_main else None)
    pending_resume = resume  # config.yaml and metrics.jsonl are touched only once a resumed round has finished
    for r in range(finished + 1, recipe.iterative.rounds + 1):
        round_dir = run_dir / f"round-{r}"
        train_dir = round_dir / "train"
        policy = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, path=policy_path, adapter=adapter))
        sampled, resume_training = ranks.broadcast(
            ((round_dir / "pairs.jsonl").is_file(), is_run_folder(train_dir)) if ranks.is_main else None
        )
        if sampled:
            stats = json.loads((round_dir / "sample_stats.json").read_text(encoding="utf-8"))
        else:
            stats = _sample_round(recipe, round_dir, r, policy, composer, ranks)
        sub = round_recipe(recipe, round_dir, adapter, policy_path)
        result = run_training(sub, resume=resume_training, inside=run_dir)
        if result.final_checkpoint is None:
            raise ConfigError(f"iterative round {r}: the training run wrote no checkpoint (train.save_steps)")
        if recipe.peft.enabled or adapter is not None:
            adapter = str(result.final_checkpoint)
        else:
            policy_path = str(result.final_checkpoint)  # full fine-tuning: the next round starts from these weights
        if ranks.is_main:
            record = {
                "step": r,
                "round": r,
                "pairs": stats["pairs"],
                "samples": stats["samples"],
                "skipped": stats["skipped"],
                "composite_reward": stats["mean_composite"],
                "objectives": stats["mean_scores"],
                "train": _last_train_metrics(train_dir),
            }
            if pending_resume:
                write_run_files(run_dir, recipe)
                writer.truncate_after(finished)
            writer.write(record)
            atomic_write_json(round_dir / ROUND_MARKER, {"round": r, "policy_path": policy_path, "adapter": adapter})
            print(
                f"round {r}/{recipe.iterative.rounds}: {stats['pairs']} pairs, on-policy composite "
                f"{stats['mean_composite']:.3f}, trained to {result.final_checkpoint}",
                flush=True,
            )
        pending_resume = False
        ranks.barrier()
    final = Path(adapter) if adapter is not None else Path(policy_path)
    return RunResult(run_dir=run_dir, final_checkpoint=final, steps=recipe.iterative.rounds)
