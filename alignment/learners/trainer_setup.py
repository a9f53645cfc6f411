"""Per-algorithm setup: from a validated recipe to a trainer factory the common run frame (`learners.run`) calls.

GRPO trains on prompts scored by the reward composer; DPO / RPO / SparsePO train on preference rows.
Everything that can be checked (data rows, chat prompts against the tokenizer's template, model, LoRA targets,
engine, batch sizes) is checked here, before the run frame writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignment.errors import ConfigError, DataError
from alignment.learners.chat_check import check_preference_rendering, check_prompt_rendering
from alignment.learners.factory import build_composer, build_rollout_engine, load_model_and_tokenizer, peft_config
from alignment.learners.heldout import load_heldout
from alignment.learners.preflight import check_steps_have_data
from alignment.learners.trainer_args import grpo_args, preference_args, world_info
from alignment.recipes.preference_data import drop_long_prompts, read_preference_rows
from alignment.recipes.prompt_data import load_prompts
from alignment.recipes.recipe import Recipe
from rewards.composer import RewardComposer
from rewards.weighting.gradient import layer_index


@dataclass
class TrainerSetup:
    """What an algorithm's setup hands the common run frame: a trainer factory (given the callbacks), the
    composer whose objectives the metrics name (None for offline preference learning), and extra JSON files
    to put into the run folder (name -> content)."""

    build: Callable[[list[Any]], Any]
    composer: RewardComposer | None
    run_files: dict[str, Any]


def grpo_setup(recipe: Recipe, run_dir: Path, world_size: int) -> TrainerSetup:
    """GRPO on the recipe's composer: prompts, composer, policy, LoRA config, rollout engine and GRPOConfig,
    all checked before the trainer is built."""
    dataset = load_prompts(recipe.data.train, recipe.data.prompt_column, recipe.data.max_rows)
    composer = build_composer(recipe)
    heldout = load_heldout(recipe) if recipe.rewards.weighting.wants_heldout() else None
    model, tokenizer = load_model_and_tokenizer(recipe)
    check_prompt_rendering(tokenizer, dataset["prompt"], recipe.data.train)
    check_layer_band(composer, model)
    rows = recipe.train.prompts_per_step * recipe.train.num_generations
    minibatches = getattr(composer.weighting, "minibatches", 1)
    if minibatches > rows:
        raise ConfigError(
            f"rewards.weighting.options.minibatches: {minibatches} multiplier minibatches but a step has only "
            f"{rows} completions (train.prompts_per_step x train.num_generations)"
        )
    lora = peft_config(recipe, model)
    args = grpo_args(recipe, run_dir, world_size)

    from alignment.learners.grpo import ComposedGRPOTrainer

    engine = build_rollout_engine(recipe, model, tokenizer)
    sampling = recipe.rollout.sampling_params()
    check_steps_have_data(len(dataset), recipe, recipe.data.train)  # else TRL runs 0 steps and exits 0

    def build(callbacks: list[Any]) -> Any:
        trainer = ComposedGRPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            composer=composer,
            engine=engine,
            sampling=sampling,
            keep_checkpoints=recipe.train.save_total_limit,
            heldout=heldout,
            callbacks=callbacks,
        )
        if engine.name == "transformers":  # it generates with the trainer's (possibly PEFT-wrapped) model
            engine.model = trainer.model
        return trainer

    return TrainerSetup(build=build, composer=composer, run_files={})


def check_layer_band(composer: RewardComposer, model: Any) -> None:
    """ConfigError when gradient weighting's `layer_band` selects no parameter of the policy (checked on the base
    model: a LoRA adapter wraps the same ``layers.N`` modules)."""
    band = getattr(composer.weighting, "layer_band", None)
    if band is None:
        return
    layers = sorted({i for name, _ in model.named_parameters() if (i := layer_index(name)) is not None})
    if not any(band[0] <= i <= band[1] for i in layers):
        have = f"layers {layers[0]}..{layers[-1]}" if layers else "no numbered layers"
        raise ConfigError(
            f"rewards.weighting.options.layer_band: {list(band)} selects no parameter of the policy (it has {have})"
        )


def preference_setup(recipe: Recipe, run_dir: Path, world_size: int) -> TrainerSetup:
    """DPO / RPO / SparsePO on the recipe's preference rows (bad rows skipped and counted into data_report.json)."""
    from datasets import Dataset

    p = recipe.preference
    rows, report = read_preference_rows(
        recipe.data.train, on_bad=p.bad_pairs, hint=" (set preference.bad_pairs: skip to skip such rows)"
    )
    if recipe.data.max_rows is not None:
        rows = rows[: recipe.data.max_rows]
    model, tokenizer = load_model_and_tokenizer(recipe)
    tokenizer.padding_side = "right"  # TRL's preference collator pads on the right
    check_preference_rendering(tokenizer, rows, recipe.data.train)
    rows = drop_long_prompts(rows, tokenizer, p.max_length, report, p.too_long)
    check_steps_have_data(len(rows), recipe, recipe.data.train)
    if world_info()[0] == 0:
        print(report.summary(), flush=True)
    try:
        dataset = Dataset.from_list([{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows])
    except Exception as err:  # noqa: BLE001 - pyarrow type errors
        raise DataError(f"{recipe.data.train}: rows mix standard and conversational formats ({err})") from None
    lora = peft_config(recipe, model)
    # Full fine-tuning needs a frozen reference copy; loading it here keeps TRL from looking the path up. With an
    # adapter (new, or continued from model.adapter) the reference is the model with that adapter disabled or
    # frozen as TRL's "ref" copy.
    from peft import PeftModel

    training_adapter = lora is not None or isinstance(model, PeftModel)
    ref_model = None if training_adapter else load_model_and_tokenizer(recipe)[0]
    args = preference_args(recipe, run_dir, world_size)

    from alignment.learners.preference import PreferenceTrainer

    def build(callbacks: list[Any]) -> Any:
        return PreferenceTrainer(
            model=model,
            ref_model=ref_model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora,
            algorithm=recipe.algorithm,
            settings=p,
            keep_checkpoints=recipe.train.save_total_limit,
            callbacks=callbacks,
        )

    return TrainerSetup(build=build, composer=None, run_files={"data_report.json": report.to_dict()})
