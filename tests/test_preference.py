"""The DPO / RPO / SparsePO learners: TRL equivalence on one batch, wiring, bad rows, runs and exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from alignment.cli import main
from alignment.errors import DataError
from alignment.learners.checkpointing import complete_checkpoints
from alignment.learners.preference import MASK_HEAD_FILE, PreferenceTrainer
from alignment.recipes.preference_data import drop_long_prompts, read_preference_rows
from alignment.recipes.recipe import PreferenceConfig

TOPICS = ("bread", "rivers", "bees", "snow", "trains", "tea", "owls", "glass")


def pair_rows(n: int = 8) -> list[dict[str, str]]:
    return [
        {
            "prompt": f"Question: Tell me about {t}.\nAnswer:",
            "chosen": f" {t.capitalize()} are interesting and {t} matter.",
            "rejected": " I do not know anything at all about that.",
        }
        for t in (TOPICS * 2)[:n]
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def perturbed_models(model_dir: Path) -> tuple[Any, Any, Any]:
    """(policy, reference, tokenizer): the policy is the reference plus seeded noise, so the loss is not log 2."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    ref = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return policy, ref, tokenizer


def batch_loss(trainer: Any, n: int = 4) -> float:
    """The loss of the first n pairs, in eval mode (no dropout); metrics land in trainer._metrics["eval"]."""
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n)])
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def trainers(
    tmp_path: Path, model_dir: Path, ours: dict[str, Any], trl_args: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """Our PreferenceTrainer and (optionally) TRL's DPOTrainer on copies of the same policy/reference/data."""
    policy, ref, tokenizer = perturbed_models(model_dir)
    data = Dataset.from_list(pair_rows())
    common = {
        "per_device_train_batch_size": 4,
        "report_to": "none",
        "beta": 0.3,
        "max_length": 64,
        "seed": 0,
        "bf16": False,
    }
    mine = PreferenceTrainer(
        model=copy.deepcopy(policy),
        ref_model=copy.deepcopy(ref),
        args=DPOConfig(output_dir=str(tmp_path / "ours"), **common),
        train_dataset=data,
        processing_class=tokenizer,
        algorithm=ours.pop("algorithm"),
        settings=PreferenceConfig(beta=0.3, **ours),
    )
    theirs = None
    if trl_args is not None:
        theirs = DPOTrainer(
            model=copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=DPOConfig(output_dir=str(tmp_path / "trl"), **common, **trl_args),
            train_dataset=data,
            processing_class=tokenizer,
        )
    return mine, theirs


def test_dpo_learner_equals_trl_dpo_trainer(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine, theirs = trainers(tmp_path, tiny_model_dir, {"algorithm": "dpo"}, {"loss_type": ["sigmoid"]})
    ours, trl = batch_loss(mine), batch_loss(theirs)
    assert abs(ours - 0.6931) > 1e-3, "policy and reference must differ for the comparison to mean anything"
    assert ours == pytest.approx(trl, abs=1e-5)


def test_rpo_trl_sft_form_equals_trl_sigmoid_plus_sft(tmp_path: Path, tiny_model_dir: Path) -> None:
    ours_args = {"algorithm": "rpo", "rpo_version": "trl_sft", "rpo_eta": 0.7}
    mine, theirs = trainers(
        tmp_path, tiny_model_dir, ours_args, {"loss_type": ["sigmoid", "sft"], "loss_weights": [1, 0.7]}
    )
    assert batch_loss(mine) == pytest.approx(batch_loss(theirs), abs=1e-5)


def test_rpo_sum_and_mean_differ_from_trl_form(tmp_path: Path, tiny_model_dir: Path) -> None:
    losses = {}
    for version in ("sum", "mean", "trl_sft"):
        mine, _ = trainers(
            tmp_path / version, tiny_model_dir, {"algorithm": "rpo", "rpo_version": version, "rpo_eta": 0.5}
        )
        losses[version] = batch_loss(mine)
    dpo, _ = trainers(tmp_path / "dpo", tiny_model_dir, {"algorithm": "dpo"})
    base = batch_loss(dpo)
    # Every form adds a positive NLL term to the same DPO loss, and the three terms differ.
    assert all(v > base for v in losses.values())
    assert len({round(v, 6) for v in losses.values()}) == 3


def test_sparsepo_with_unit_mask_and_no_kl_equals_dpo(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = {"algorithm": "sparsepo", "use_kl": False, "lambda_u": 0.0, "lambda_d": 0.0, "mask_dropout": 0.0}
    sparse, _ = trainers(tmp_path / "s", tiny_model_dir, settings)
    head = sparse.mask_head
    with torch.no_grad():  # every per-layer score 1, mixed by 1/L: the mask is exactly 1 on every token
        for layer in head.reward_head.per_layer:
            layer.weight.zero_()
            layer.bias.fill_(1.0)
        head.reward_head.mixer.weight.fill_(1.0 / head.num_layers)
    dpo, _ = trainers(tmp_path / "d", tiny_model_dir, {"algorithm": "dpo"})
    assert batch_loss(sparse) == pytest.approx(batch_loss(dpo), abs=1e-5)
    assert sparse._metrics["eval"]["mask/mean"][-1] == pytest.approx(1.0)
    assert sparse._metrics["eval"]["mask/sparsity"][-1] == 0.0


def test_sparsepo_activation_mask_and_separate_heads_log_their_masks(tmp_path: Path, tiny_model_dir: Path) -> None:
    act, _ = trainers(tmp_path / "a", tiny_model_dir, {"algorithm": "sparsepo", "mask": "activation"})
    batch_loss(act)
    metrics = act._metrics["eval"]
    assert 0.0 < metrics["mask/mean"][-1] < 1.0  # min-max scaled activations
    assert "mask/kl_mean" not in metrics
    sep, _ = trainers(tmp_path / "s", tiny_model_dir, {"algorithm": "sparsepo", "separate_masks": True})
    batch_loss(sep)
    assert {"mask/sparsity", "mask/mean", "mask/kl_sparsity", "mask/kl_mean", "sparsepo/d"} <= set(sep._metrics["eval"])


def test_mask_head_gets_its_own_weight_decay(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine, _ = trainers(tmp_path, tiny_model_dir, {"algorithm": "sparsepo", "mask_weight_decay": 0.03})
    optimizer = mine.create_optimizer()
    head_ids = {id(p) for p in mine.mask_head.parameters()}
    groups = [g for g in optimizer.param_groups if any(id(p) in head_ids for p in g["params"])]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.03
    assert {id(p) for p in groups[0]["params"]} == head_ids


# --- bad rows ---------------------------------------------------------------------------------------------------


def test_bad_pairs_are_skipped_and_counted_or_rejected(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = pair_rows(4)
    rows[1]["chosen"] = "   "
    rows[2]["rejected"] = rows[2]["chosen"]
    rows.append({"prompt": "Question: " + "very long words " * 200, "chosen": " a", "rejected": " b"})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kept, report = read_preference_rows(path)
    assert len(kept) == 3 and report.skipped == {"empty answer": 1, "chosen equals rejected": 1}
    assert report.examples == {"empty answer": [2], "chosen equals rejected": [3]}
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    kept = drop_long_prompts(kept, tokenizer, 64, report, "skip")
    assert len(kept) == 2 and report.skipped["prompt too long"] == 1 and report.kept == 2
    assert "2/5 preference rows kept" in report.summary()
    with pytest.raises(DataError, match=r"row 2: 'chosen' is empty"):
        read_preference_rows(path, on_bad="error")
    with pytest.raises(DataError, match=r"pair 3: the prompt has \d+ tokens, preference.max_length is 64"):
        drop_long_prompts(read_preference_rows(path)[0], tokenizer, 64, report, "error")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "chosen": "a", "rejected": 3}, "'rejected' must be a string or a list of chat messages"),
        (
            {"prompt": "Q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"},
            "must all be strings or all be chat messages",
        ),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "the prompt is empty"),
    ],
)
def test_malformed_rows_stop_with_the_row(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_preference_rows(write_jsonl(tmp_path / "bad.jsonl", [*pair_rows(2), row]))


def test_train_refuses_incompatible_options_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("algorithm: dpo\nrewards: {weighting: {strategy: hypervolume}}\n")
    assert main(["train", str(recipe), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("align train: error: rewards.weighting.strategy: 'hypervolume' weighting") and "\n" not in err
    assert not (tmp_path / "run").exists()


# --- runs ----------------------------------------------------------------------------------------------------------


def preference_recipe(tmp_path: Path, model_dir: Path, algorithm: str, steps: int, extra: str = "") -> Path:
    rows = pair_rows(8)
    rows.append({"prompt": "Q: " + "long " * 300, "chosen": " a", "rejected": " b"})  # skipped: prompt too long
    rows.append({"prompt": "Q: same?", "chosen": " yes", "rejected": " yes"})  # skipped: identical
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(
        f"""
algorithm: {algorithm}
seed: 3
model: {{path: {model_dir}}}
data: {{train: {data}}}
preference: {{beta: 0.2, max_length: 64{extra}}}
train: {{max_steps: {steps}, pairs_per_step: 4, save_steps: 2, learning_rate: 2.0e-3, report_to: [none],
         torch_threads: 1}}
"""
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("algorithm", "extra", "logged"),
    [
        ("dpo", "", "rewards/margins"),
        ("rpo", ", rpo_version: mean, rpo_eta: 0.2", "rpo/regularizer"),
        ("sparsepo", ", mask: activation", "mask/sparsity"),
    ],
)
def test_learner_runs_and_writes_a_run_folder(
    tmp_path: Path, tiny_model_dir: Path, algorithm: str, extra: str, logged: str
) -> None:
    recipe = preference_recipe(tmp_path, tiny_model_dir, algorithm, steps=2, extra=extra)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(logged in r and "rewards/accuracies" in r for r in records)
    report = json.loads((run / "data_report.json").read_text())
    assert report["kept"] == 8 and report["skipped"] == {"prompt too long": 1, "chosen equals rejected": 1}
    assert [c.name for c in complete_checkpoints(run)] == ["checkpoint-2"]


@pytest.mark.slow
def test_sparsepo_resume_equals_uninterrupted_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = preference_recipe(tmp_path, tiny_model_dir, "sparsepo", steps=4, extra=", separate_masks: true")
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", str(recipe), "--output-dir", str(full)]) == 0
    assert main(["train", str(recipe), "--output-dir", str(part), "--set", "train.max_steps=2"]) == 0
    assert main(["train", str(recipe), "--output-dir", str(part), "--resume"]) == 0
    for name in ("adapter_model.safetensors", MASK_HEAD_FILE):
        a, b = load_file(str(full / "checkpoint-4" / name)), load_file(str(part / "checkpoint-4" / name))
        assert a.keys() == b.keys() and a
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0)
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_dpo_full_fine_tuning_moves_the_margin(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = preference_recipe(tmp_path, tiny_model_dir, "dpo", steps=6)
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(run), "--set", "peft.enabled=false"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert records[-1]["rewards/margins"] > 0.05
    assert (run / "checkpoint-6" / "model.safetensors").is_file()
