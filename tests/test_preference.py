"""The DPO / RPO / SparsePO learners: TRL equivalence on one batch, wiring, bad rows, runs and exact resume."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from alignment.cli import main
from alignment.errors import ConfigError, DataError
from alignment.learners.checkpointing import complete_checkpoints
from alignment.learners.preference import (
    MASK_HEAD_FILE,
    ActivationRecorder,
    PreferenceTrainer,
    activation_hook_points,
)
from alignment.recipes.loader import load_dataclass
from alignment.recipes.preference_data import drop_long_prompts, read_preference_rows
from alignment.recipes.recipe import PreferenceConfig, load_recipe

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
    # the default hooks are the authors' "all": on the 2-layer model 2 mlp, 8 attn, 14 resid and 1 logits tensors
    assert len(act.recorder._handles) == 25
    sep, _ = trainers(tmp_path / "s", tiny_model_dir, {"algorithm": "sparsepo", "separate_masks": True})
    batch_loss(sep)
    assert {"mask/sparsity", "mask/mean", "mask/kl_sparsity", "mask/kl_mean", "sparsepo/d"} <= set(sep._metrics["eval"])


def test_mask_head_gets_its_own_weight_decay(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine, _ = trainers(tmp_path, tiny_model_dir, {"algorithm": "sparsepo", "mask_weight_decay": 0.03})
    optimizer = mine.create_optimizer()
    head_ids = {id(p) for p in mine.mask_head.parameters()}
    groups = [g for g in optimizer.param_groups if any(id(p) in head_ids for p in g["params"])]
    # as the authors' optimiser: the head's Linear weights decay, its biases and LayerNorm do not
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.03]
    decayed = next(g for g in groups if g["weight_decay"] == 0.03)
    assert {id(p) for p in decayed["params"]} == {id(p) for p in mine.mask_head.decayed_parameters()}
    assert {id(p) for g in groups for p in g["params"]} == head_ids
    assert all(id(p) not in head_ids for g in optimizer.param_groups if g not in groups for p in g["params"])


def test_mask_head_starts_like_the_authors_with_dropout_off(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine, _ = trainers(tmp_path, tiny_model_dir, {"algorithm": "sparsepo"})
    head = mine.mask_head
    assert all(m.p == 0.0 for m in head.modules() if isinstance(m, torch.nn.Dropout))
    assert all(torch.equal(lin.bias, torch.zeros(1)) for lin in head.reward_head.per_layer)
    weights = torch.cat([lin.weight.flatten() for lin in head.reward_head.per_layer])
    assert weights.abs().max().item() < 0.02 * 5  # N(0, initializer_range = 0.02): no draw of 64 beyond 5 sigma
    # dropout off: the training-mode loss is deterministic
    mine.model.train()
    batch = mine.data_collator([mine.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        first, second = (float(mine.compute_loss(mine.model, batch)) for _ in range(2))
    assert first == second
    wide, _ = trainers(tmp_path / "wide", tiny_model_dir, {"algorithm": "sparsepo", "mask_init_std": 0.5})
    wide_weights = torch.cat([lin.weight.flatten() for lin in wide.mask_head.reward_head.per_layer])
    assert wide_weights.std().item() > 0.25  # 64 draws of N(0, 0.5): below half the std only by a >5 sigma fluke


def test_sparsepo_logs_the_masked_rewards_the_loss_uses(tmp_path: Path, tiny_model_dir: Path) -> None:
    """rewards/* carry beta * sum_t mu_t l_t (what the loss uses), dpo_rewards/* the unmasked DPO rewards; with a
    constant mask of 0.5 the first are half the second, and the loss's logit is the margin minus beta * D."""
    sparse, _ = trainers(tmp_path / "s", tiny_model_dir, {"algorithm": "sparsepo"})
    head = sparse.mask_head
    with torch.no_grad():  # every per-layer score 1, mixed by 0.5/L: the mask is 0.5 on every token
        for layer in head.reward_head.per_layer:
            layer.weight.zero_()
            layer.bias.fill_(1.0)
        head.reward_head.mixer.weight.fill_(0.5 / head.num_layers)
    batch_loss(sparse)
    m = {k: v[-1] for k, v in sparse._metrics["eval"].items()}
    assert m["mask/mean"] == pytest.approx(0.5)
    assert abs(m["dpo_rewards/margins"]) > 1e-3, "policy and reference must differ for the check to mean anything"
    # float32 sums of per-token log-ratios, reduced in another order (and with a mask of 0.5 up to rounding):
    # they agree to ~1e-5 relative across CPUs, not bit for bit (7e-6 seen on an AMD EPYC)
    close = {"rel": 1e-4, "abs": 1e-6}
    for side in ("chosen", "rejected", "margins"):
        assert m[f"rewards/{side}"] == pytest.approx(0.5 * m[f"dpo_rewards/{side}"], **close)
    assert m["rewards/accuracies"] == m["dpo_rewards/accuracies"]  # halving both sides keeps every comparison
    assert m["sparsepo/logit"] == pytest.approx(m["rewards/margins"] - 0.3 * m["sparsepo/d"], **close)
    assert m["rewards/margins"] == pytest.approx(0.3 * m["sparsepo/u"], **close)
    # DPO's own rewards are the same numbers under TRL's names
    dpo, _ = trainers(tmp_path / "d", tiny_model_dir, {"algorithm": "dpo"})
    batch_loss(dpo)
    assert dpo._metrics["eval"]["rewards/margins"][-1] == pytest.approx(m["dpo_rewards/margins"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    ("algorithm", "settings", "beta", "eta"),
    [
        ("dpo", {}, 0.1, 0.005),
        ("sparsepo", {}, 0.1, 0.005),
        ("rpo", {}, 0.01, 0.005),
        ("rpo", {"rpo_version": "sum"}, 0.01, 0.005),
        ("rpo", {"rpo_version": "mean"}, 0.5, 0.2),
        ("rpo", {"rpo_version": "trl_sft"}, 0.1, 1.0),
        ("rpo", {"rpo_version": "mean", "beta": 0.3}, 0.3, 0.2),
        ("rpo", {"rpo_version": "sum", "rpo_eta": 0.7}, 0.01, 0.7),
    ],
)
def test_unset_beta_and_eta_take_the_authors_values(algorithm: str, settings: dict, beta: float, eta: float) -> None:
    config = PreferenceConfig(**settings)
    resolved = config.resolved(algorithm)
    assert (resolved.beta, resolved.rpo_eta) == (beta, eta)
    assert config.beta == settings.get("beta") and config.rpo_eta == settings.get("rpo_eta")  # not mutated
    assert resolved.resolved(algorithm) == resolved


def test_preference_config_checks_hook_types() -> None:
    with pytest.raises(ConfigError, match=r"preference.activation_hooks: unknown hook type\(s\) \['self_attn'\]"):
        load_dataclass(PreferenceConfig, {"activation_hooks": ["mlp", "self_attn"]}, "preference")
    assert PreferenceConfig(activation_hooks=["logits", "all"]).hook_types() == ["mlp", "attn", "resid", "logits"]
    assert PreferenceConfig(activation_hooks=["resid", "mlp"]).hook_types() == ["mlp", "resid"]
    with pytest.raises(ConfigError, match="preference.beta: must be > 0 or null"):
        load_dataclass(PreferenceConfig, {"beta": 0}, "preference")


def test_activation_hooks_read_the_authors_sites(tiny_model_dir: Path) -> None:
    """The hook points per type, and the values of those that Hugging Face also returns (hidden states, logits)."""
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    points = activation_hook_points(model, ["mlp", "attn", "resid", "logits"])
    kinds = [kind for kind, _, _ in points]
    assert {k: kinds.count(k) for k in set(kinds)} == {"mlp": 2, "attn": 8, "resid": 14, "logits": 1}
    layers = model.get_decoder().layers
    assert points[0][1:] == (layers[0].mlp.down_proj, "input")
    recorder = ActivationRecorder([p for p in points if p[0] in ("resid", "logits")])
    ids = torch.randint(0, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), recorder.record() as recorded:
        out = model(input_ids=ids, output_hidden_states=True)
    resid = recorded["resid"]
    assert len(resid) == 14 and all(t.shape == (2, 9, 1) for t in resid)
    # in forward order: embeddings; per layer input norm, attention out, residual after attention, its norm, MLP out,
    # layer out; final norm. HF returns the embeddings, the first layer's output and the final norm's output too.
    torch.testing.assert_close(resid[0], out.hidden_states[0].mean(-1, keepdim=True))
    torch.testing.assert_close(resid[6], out.hidden_states[1].mean(-1, keepdim=True))
    torch.testing.assert_close(resid[13], out.hidden_states[-1].mean(-1, keepdim=True))
    torch.testing.assert_close(recorded["logits"][0], out.logits.mean(-1, keepdim=True))
    # residual after attention = layer input + attention output; layer output = that residual + MLP output
    torch.testing.assert_close(resid[3], resid[0] + resid[2])
    torch.testing.assert_close(resid[6], resid[3] + resid[5])
    recorder.remove()
    # under LoRA the same sites are found through the PEFT wrapper
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    assert [k for k, _, _ in activation_hook_points(lora, ["mlp", "attn"])] == ["mlp"] * 2 + ["attn"] * 8


def test_activation_hooks_refuse_a_model_they_do_not_know() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    with pytest.raises(ConfigError, match="preference.activation_hooks: .*Llama-style"):
        activation_hook_points(gpt2, ["mlp"])


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


# --- the paper recipes ---------------------------------------------------------------------------------------------

PAPER = Path(__file__).resolve().parent.parent / "configs" / "paper"
# The authors' settings each configs/paper recipe must carry (docs/FIDELITY.md): (algorithm, preference, train).
PAPER_SETTINGS = {
    "dpo": ("dpo", {"beta": 0.1, "label_smoothing": 0.0}, {"learning_rate": 1e-6, "lr_scheduler_type": "constant"}),
    "rpo_sum": ("rpo", {"rpo_version": "sum", "beta": 0.01, "rpo_eta": 0.005}, {"learning_rate": 5e-7}),
    "rpo_mean": ("rpo", {"rpo_version": "mean", "beta": 0.5, "rpo_eta": 0.2}, {"learning_rate": 5e-7}),
    "sparsepo": (
        "sparsepo",
        {
            "beta": 0.1,
            "mask": "sparse",
            "separate_masks": False,
            "use_kl": True,
            "lambda_u": 0.001,
            "lambda_d": 0.001,
            "mask_dropout": 0.0,
            "mask_weight_decay": 0.01,
        },
        {"learning_rate": 5e-7, "lr_scheduler_type": "cosine"},
    ),
}


@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_recipes_carry_the_authors_settings(name: str) -> None:
    algorithm, preference, train = PAPER_SETTINGS[name]
    recipe = load_recipe(PAPER / f"{name}.yaml")
    resolved = recipe.preference.resolved(recipe.algorithm)
    assert recipe.algorithm == algorithm and recipe.peft.enabled is False  # every author trained all weights
    assert {k: getattr(resolved, k) for k in preference} == preference
    assert {k: getattr(recipe.train, k) for k in train} == train
    # every preference recipe in configs/paper is checked here (the reward and weighting ones elsewhere)
    preference_recipes = [p.stem for p in PAPER.glob("*.yaml") if yaml.safe_load(p.read_text())["algorithm"] != "grpo"]
    assert sorted(preference_recipes) == sorted(PAPER_SETTINGS)


def test_cpu_rpo_recipe_takes_the_authors_sum_defaults() -> None:
    recipe = load_recipe(Path(__file__).resolve().parent.parent / "configs" / "rpo.yaml")
    assert (recipe.preference.beta, recipe.preference.rpo_eta) == (None, None)
    resolved = recipe.preference.resolved("rpo")
    assert (resolved.rpo_version, resolved.beta, resolved.rpo_eta) == ("sum", 0.01, 0.005)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER_SETTINGS))
def test_paper_recipe_runs_shortened_and_records_the_values_used(tmp_path: Path, name: str) -> None:
    run = tmp_path / name
    args = ["train", str(PAPER / f"{name}.yaml"), "--output-dir", str(run)]
    for override in ("train.max_steps=1", "train.pairs_per_step=2", "train.save_steps=1", "train.report_to=[none]"):
        args += ["--set", override]
    assert main(args) == 0
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and "rewards/accuracies" in record
    written = yaml.safe_load((run / "config.yaml").read_text())["preference"]
    _, preference, _ = PAPER_SETTINGS[name]
    assert {k: written[k] for k in preference} == preference
