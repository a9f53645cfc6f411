"""Recipe sections of the preference learners: `preference` (DPO / RPO / SparsePO) and `iterative` (on-policy
rounds). Part of the recipe (`alignment.recipes.recipe`), which re-exports both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignment.recipes.checks import check as _check


@dataclass
class PreferenceConfig:
    """DPO / RPO / SparsePO settings (SPECS sections 4, 5, 8; docs/FIDELITY.md); used when `algorithm` is dpo, rpo
    or sparsepo.

    beta, label_smoothing: the DPO term (cDPO smoothing, 0 = plain DPO). beta and rpo_eta left unset (null) take
    the authors' value for the algorithm and RPO version (`resolved`, DEFAULT_BETA / DEFAULT_RPO_ETA): DPO and
    SparsePO beta 0.1 (Rafailov et al. and TRL; SparsePO's HH recipe); RPO sum beta 0.01 / eta 0.005 (Liu et al.,
    main text), mean beta 0.5 / eta 0.2 (their appendix F), trl_sft beta 0.1 / eta 1.0 (Pang et al.; TRL's
    `rpo_alpha`). max_length: prompt + completion tokens per sequence (longer ones are cut at the end, as TRL
    does); a pair whose prompt alone reaches it is skipped and counted (`too_long: skip`) or stops the run before
    training (`too_long: error`). Pairs with an empty or identical chosen/rejected answer are skipped and counted
    (`bad_pairs: skip`) or rejected (`error`). mask, separate_masks, use_kl, lambda_u, lambda_d, mask_dropout,
    mask_weight_decay, mask_init_std, activation_hooks: SparsePO (sparse = learned mask head on the reference
    hidden states; activation = masks from reference activations of the hook types in `activation_hooks`, no
    L1). Defaults are the authors' code's: L1 weights 0 (their HH sparse-common recipe: 0.001), mask dropout 0
    (their trainer turns every dropout of the model, the mask head included, off), mask weight decay 0.01, mask
    head Linear weights from N(0, std) with std = the model's initializer_range (`mask_init_std: null`; a number
    overrides it), hooks "all".
    """

    # The authors' beta / eta per algorithm ("rpo:<version>" for RPO); `resolved` fills unset fields from these.
    DEFAULT_BETA = {  # plain class attributes (no annotation): not dataclass fields
        "dpo": 0.1,
        "sparsepo": 0.1,
        "rpo:sum": 0.01,
        "rpo:mean": 0.5,
        "rpo:trl_sft": 0.1,
    }
    DEFAULT_RPO_ETA = {"sum": 0.005, "mean": 0.2, "trl_sft": 1.0}
    # SparsePO activation-mask hook types (the authors' `activation_hook`); "all" is every one of them.
    ACTIVATION_HOOK_TYPES = ("mlp", "attn", "resid", "logits")

    beta: float | None = None
    label_smoothing: float = 0.0
    max_length: int | None = 512
    too_long: Literal["skip", "error"] = "skip"
    bad_pairs: Literal["skip", "error"] = "skip"
    rpo_eta: float | None = None
    rpo_version: Literal["sum", "mean", "trl_sft"] = "sum"
    mask: Literal["sparse", "activation"] = "sparse"
    separate_masks: bool = False
    use_kl: bool = True
    lambda_u: float = 0.0
    lambda_d: float = 0.0
    mask_dropout: float = 0.0
    mask_weight_decay: float = 0.01
    mask_init_std: float | None = None
    activation_hooks: list[str] = field(default_factory=lambda: ["all"])

    def validate(self, where: str) -> None:
        if self.beta is not None:
            _check(self.beta > 0, f"{where}.beta", f"must be > 0 or null (the algorithm's default), got {self.beta}")
        _check(0 <= self.label_smoothing <= 0.5, f"{where}.label_smoothing", "must be in [0, 0.5]")
        if self.max_length is not None:
            _check(self.max_length >= 2, f"{where}.max_length", f"must be >= 2 or null, got {self.max_length}")
        if self.rpo_eta is not None:
            _check(
                self.rpo_eta >= 0,
                f"{where}.rpo_eta",
                f"must be >= 0 or null (the version's default), got {self.rpo_eta}",
            )
        for name in ("lambda_u", "lambda_d", "mask_weight_decay"):
            value = getattr(self, name)
            _check(value >= 0, f"{where}.{name}", f"must be >= 0, got {value}")
        _check(0 <= self.mask_dropout < 1, f"{where}.mask_dropout", f"must be in [0, 1), got {self.mask_dropout}")
        if self.mask_init_std is not None:
            _check(self.mask_init_std > 0, f"{where}.mask_init_std", f"must be > 0 or null, got {self.mask_init_std}")
        allowed = ("all", *self.ACTIVATION_HOOK_TYPES)
        unknown = [h for h in self.activation_hooks if h not in allowed]
        _check(not unknown, f"{where}.activation_hooks", f"unknown hook type(s) {unknown}; allowed: {list(allowed)}")
        if self.mask == "activation":
            _check(not self.separate_masks, f"{where}.separate_masks", "the activation mask is one shared mask")
            _check(len(self.activation_hooks) > 0, f"{where}.activation_hooks", "must name at least one hook type")

    def resolved(self, algorithm: str) -> PreferenceConfig:
        """A copy with `beta` and `rpo_eta` filled in from the authors' defaults for `algorithm` (dpo | rpo |
        sparsepo) where the recipe left them unset; values the recipe set are kept."""
        from dataclasses import replace

        key = f"rpo:{self.rpo_version}" if algorithm == "rpo" else algorithm
        beta = self.beta if self.beta is not None else self.DEFAULT_BETA.get(key, self.DEFAULT_BETA["dpo"])
        eta = self.rpo_eta if self.rpo_eta is not None else self.DEFAULT_RPO_ETA[self.rpo_version]
        return replace(self, beta=beta, rpo_eta=eta, activation_hooks=list(self.activation_hooks))

    def hook_types(self) -> list[str]:
        """`activation_hooks` with "all" expanded, in the authors' order (mlp, attn, resid, logits), no repeats."""
        wanted = set(self.ACTIVATION_HOOK_TYPES) if "all" in self.activation_hooks else set(self.activation_hooks)
        return [h for h in self.ACTIVATION_HOOK_TYPES if h in wanted]


@dataclass
class IterativeConfig:
    """Iterative (on-policy) preference training: `rounds` x (sample -> pairs -> one preference run -> sync).

    Each round samples `n` completions per prompt of `prompts` from the current policy with the rollout worker,
    scores them with the recipe's `rewards` composer, builds pairs (`pairs`: best-worst or all; ties skipped),
    and trains `steps_per_round` steps of the recipe's algorithm on them, continuing the adapter of the round
    before (whose weights the next round samples from). `rounds: 0` = offline training on `data.train`.
    """

    rounds: int = 0
    prompts: str | None = None
    n: int = 8
    pairs: Literal["best-worst", "all"] = "best-worst"
    steps_per_round: int = 12
    max_prompts: int | None = None

    def validate(self, where: str) -> None:
        _check(self.rounds >= 0, f"{where}.rounds", f"must be >= 0, got {self.rounds}")
        _check(self.n >= 2, f"{where}.n", f"needs at least 2 samples per prompt to make pairs, got {self.n}")
        _check(self.steps_per_round > 0, f"{where}.steps_per_round", f"must be positive, got {self.steps_per_round}")
        if self.max_prompts is not None:
            _check(self.max_prompts > 0, f"{where}.max_prompts", f"must be positive or null, got {self.max_prompts}")
