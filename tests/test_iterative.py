"""Iterative on-policy preference training: sample -> pairs -> DPO -> the next round samples the new adapter; in one
process, and in two through the deepspeed launcher (each rank samples its share, ZeRO-2 training, kill and
resume per round)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from launch_helpers import REPO, VENV_BIN, finish, free_port, kill_group, start, wait_for
from safetensors.torch import load_file

from alignment.cli import main
from alignment.learners.iterative import ROUND_MARKER
from alignment.learners.onpolicy_pairs import merge_shards, sample_pairs, sample_shard
from rewards.composer import Objective, RewardComposer
from rewards.weighting import StaticWeights
from rollout.base import Sample, SamplingParams


def recipe(tmp_path: Path, model_dir: Path, rounds: int, rollout: str = "", train: str = "") -> Path:
    prompts = tmp_path / "prompts.jsonl"
    topics = ("bread", "rivers", "bees", "snow")
    prompts.write_text("".join(json.dumps({"prompt": f"Question: Tell me about {t}.\nAnswer:"}) + "\n" for t in topics))
    path = tmp_path / "iterative.yaml"
    path.write_text(
        f"""
algorithm: dpo
seed: 5
model: {{path: {model_dir}}}
rollout: {{max_new_tokens: 12, temperature: 1.2{rollout}}}
rewards:
  objectives:
    - {{name: length, component: length, args: {{unit: chars, mode: target, target: 30}}}}
iterative: {{rounds: {rounds}, prompts: {prompts}, n: 4, steps_per_round: 2}}
preference: {{beta: 0.2, max_length: 64}}
train: {{pairs_per_step: 2, save_steps: 2, learning_rate: 1.0e-3, report_to: [none], torch_threads: 1{train}}}
"""
    )
    return path


@pytest.mark.slow
def test_rounds_sample_train_and_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(recipe(tmp_path, tiny_model_dir, 1)), "--output-dir", str(run)]) == 0
    first_samples = (run / "round-1" / "samples.jsonl").read_text()
    # Resume with one more round: round 1 is kept as it was, round 2 samples from round 1's adapter.
    assert main(["train", str(recipe(tmp_path, tiny_model_dir, 2)), "--output-dir", str(run), "--resume"]) == 0
    assert (run / "round-1" / "samples.jsonl").read_text() == first_samples
    for r in (1, 2):
        round_dir = run / f"round-{r}"
        samples = [json.loads(line) for line in (round_dir / "samples.jsonl").read_text().splitlines()]
        pairs = [json.loads(line) for line in (round_dir / "pairs.jsonl").read_text().splitlines()]
        assert len(samples) == 16 and all("length" in s["scores"] for s in samples)
        assert pairs and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
        assert (round_dir / ROUND_MARKER).is_file()
        assert (round_dir / "train" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    marker = json.loads((run / "round-2" / ROUND_MARKER).read_text())
    assert marker["adapter"] == str(run / "round-2" / "train" / "checkpoint-2")
    # Round 2 continued round 1's adapter: its training config names it, and its weights moved on from it.
    round2_config = (run / "round-2" / "train" / "config.yaml").read_text()
    assert str(run / "round-1" / "train" / "checkpoint-2") in round2_config
    a = load_file(str(run / "round-1" / "train" / "checkpoint-2" / "adapter_model.safetensors"))
    b = load_file(str(run / "round-2" / "train" / "checkpoint-2" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any(not a[k].equal(b[k]) for k in a)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2]
    assert all(r["pairs"] > 0 and r["objectives"]["length"] is not None and "loss" in r["train"] for r in records)


def test_iterative_needs_prompts_and_objectives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("algorithm: dpo\niterative: {rounds: 2}\n")
    assert main(["train", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    assert "iterative.prompts: iterative rounds need a prompt file" in capsys.readouterr().err


class SeededEngine:
    """Completions of 1-6 words drawn from `params.seed` (the call's seed): a shard that got another call's seed
    or prompts would sample differently."""

    name = "seeded"

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], int | None]] = []

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[list[Sample]]:
        self.calls.append((tuple(prompts), params.seed))
        rng = random.Random(params.seed)
        groups = []
        for prompt in prompts:
            lengths = [rng.randint(1, 6) for _ in range(params.n)]
            groups.append([Sample(" ".join([prompt] * k), [1], [2] * k, [-0.25] * k, "stop") for k in lengths])
        return groups


def words(prompts: Sequence[str], completions: Sequence[str], **_: object) -> list[float]:
    return [float(len(c.split())) for c in completions]


def test_shards_of_any_world_size_merge_to_the_single_process_result() -> None:
    composer = RewardComposer([Objective("words", words)], StaticWeights([1.0]), "none")
    prompts = [f"p{i}" for i in range(7)]
    params = SamplingParams(seed=40)
    common = {"prompts_per_call": 2, "progress": False}
    single = SeededEngine()
    expected = sample_pairs(single, None, prompts, composer, 3, params, **common)
    assert [seed for _, seed in single.calls] == [40, 41, 42, 43]
    for world in (2, 3, 5):  # 4 calls: with 5 processes one shard is empty
        engines = [SeededEngine() for _ in range(world)]
        shards = [
            sample_shard(engines[rank], None, prompts, composer, 3, params, **common, shard=(rank, world))
            for rank in range(world)
        ]
        assert sorted(call for e in engines for call in e.calls) == sorted(single.calls), "same calls, same seeds"
        assert engines[1].calls == [call for c, call in enumerate(single.calls) if c % world == 1]
        samples, rows, stats = merge_shards(shards, len(prompts), composer)
        assert samples == expected[0] and rows == expected[1]
        timing = ("generation_seconds", "scoring_seconds", "tokens_per_second")
        assert {k: v for k, v in stats.items() if k not in timing} == {
            k: v for k, v in expected[2].items() if k not in timing
        }


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_rounds_killed_after_round_one_then_resumed(tmp_path: Path, tiny_model_dir: Path) -> None:
    """2 processes, ZeRO-2 + LoRA, 3 rounds: the launch is killed as soon as round 1 is complete; `--resume` keeps
    round 1 as it was and runs rounds 2 and 3 in one process (two DeepSpeed trainers in a row)."""
    # rollout.batch_size 8 with n = 4: two prompts per generate call, so each rank samples one of the two calls.
    path = recipe(
        tmp_path, tiny_model_dir, 3, rollout=", batch_size: 8", train=f", deepspeed: {REPO / 'configs' / 'zero2.json'}"
    )
    run = tmp_path / "run"

    def launch(tag: str, *extra: str) -> tuple[list, list[Path]]:
        command = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
        command += ["--module", "alignment.cli", "train", str(path), "--output-dir", str(run), *extra]
        log = tmp_path / f"{tag}.log"
        return [start(command, log, tmp_path)], [log]

    procs, logs = launch("killed")
    wait_for(lambda: (run / "round-1" / ROUND_MARKER).is_file(), procs, logs, "round 1 complete")
    kill_group(procs[0])
    assert not (run / "round-2" / ROUND_MARKER).exists()
    round_one = {p: p.read_bytes() for p in sorted((run / "round-1").rglob("*")) if p.is_file()}

    # Each rank sampled its share; merged, the round holds what one process samples with the same seed.
    import torch

    from alignment.learners.factory import build_composer, load_model_and_tokenizer
    from alignment.recipes.recipe import load_recipe

    loaded = load_recipe(path)
    model, tokenizer = load_model_and_tokenizer(loaded)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks (train.torch_threads: 1)
    try:
        samples, rows, _ = sample_pairs(
            model.eval(), tokenizer, [json.loads(line)["prompt"] for line in (tmp_path / "prompts.jsonl").open()],
            build_composer(loaded), 4, loaded.rollout.sampling_params(seed=loaded.seed * 1000 + 1), batch_size=8,
            progress=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    written = [json.loads(line) for line in (run / "round-1" / "samples.jsonl").read_text().splitlines()]
    assert [s["completion"] for s in written] == [s["completion"] for s in samples]
    assert [json.loads(line) for line in (run / "round-1" / "pairs.jsonl").read_text().splitlines()] == rows

    procs, logs = launch("resumed", "--resume")
    finish(procs, logs)
    assert {p: p.read_bytes() for p in sorted((run / "round-1").rglob("*")) if p.is_file()} == round_one
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [1, 2, 3], "each round logged once"
    for r in (1, 2, 3):
        round_dir = run / f"round-{r}"
        final = round_dir / "train" / "checkpoint-2"
        assert json.loads((round_dir / ROUND_MARKER).read_text())["adapter"] == str(final)
        assert all("lora_" in key for key in load_file(str(final / "adapter_model.safetensors")))
        assert len(list((final / "global_step2").glob("zero_pp_rank_*_optim_states.pt"))) == 2, "ZeRO-2, 2 ranks"
        assert len((round_dir / "samples.jsonl").read_text().splitlines()) == 16
        if r > 1:  # each round continues the adapter of the round before
            previous = str(run / f"round-{r - 1}" / "train" / "checkpoint-2")
            assert previous in (round_dir / "train" / "config.yaml").read_text()


RANK_SCRIPT = """
import json
from alignment.errors import DataError
from alignment.learners.rank_group import RankGroup
from alignment.recipes.recipe import Recipe

ranks = RankGroup(Recipe())
out = {"gathered": ranks.all_gather(ranks.rank * 10), "broadcast": ranks.broadcast(f"from rank {ranks.rank}")}


def work():
    if ranks.rank == 1:
        raise DataError("prompts.jsonl: row 3 is bad")
    return "sampled"


try:
    out["results"] = ranks.run_everywhere(work)
except DataError as err:
    out["error"] = str(err)
ranks.close()
print(json.dumps(out), flush=True)
"""


@pytest.mark.distributed
def test_rank_group_gathers_broadcasts_and_stops_every_rank_on_one_ranks_error(tmp_path: Path) -> None:
    """Two plain processes over gloo (no launcher): all_gather / broadcast, and an error raised on rank 1 while
    sampling reaches rank 0 too, instead of leaving it waiting in the gather."""
    import subprocess
    import sys

    from launch_helpers import cli_env

    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT],
            env={
                **cli_env(),
                "RANK": str(r),
                "LOCAL_RANK": str(r),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
        assert json.loads(out.splitlines()[-1]) == {
            "gathered": [0, 10],
            "broadcast": "from rank 0",
            "error": "prompts.jsonl: row 3 is bad",
        }
