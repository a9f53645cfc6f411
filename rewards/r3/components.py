"""The R^3 reward components: the reward itself and each factor alone, sharing one scorer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rewards.errors import RewardConfigError
from rewards.r3.config import R3Config
from rewards.r3.retriever import Retriever
from rewards.r3.scorer import R3Factors, R3Scorer, shared_scorer


class _R3Component:
    """Base of the R^3 components: holds a shared :class:`R3Scorer` and the objective's name."""

    default_name = "r3"
    needs_relevance = True

    def __init__(
        self,
        config: R3Config | None = None,
        *,
        name: str | None = None,
        scorer: R3Scorer | None = None,
        retriever: Retriever | None = None,
        **options: Any,
    ) -> None:
        if scorer is not None and (config is not None or options or retriever is not None):
            raise RewardConfigError("r3: pass either a scorer or config/options/retriever, not both")
        if scorer is None:
            cfg = R3Config.from_kwargs(config, **options)
            scorer = R3Scorer(cfg, retriever=retriever) if retriever is not None else shared_scorer(cfg)
        self.scorer = scorer
        self.name = name or self.default_name

    @property
    def __name__(self) -> str:  # TRL names reward functions by __name__
        return self.name

    @property
    def config(self) -> R3Config:
        """The scorer's options."""
        return self.scorer.config

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **columns: Sequence[Any]
    ) -> list[float | None]:
        factors = self.scorer.factors(prompts, completions, columns, relevance=self.needs_relevance)
        return [None if v is None or math.isnan(v) else float(v) for v in self._values(factors)]

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class R3Reward(_R3Component):
    """R^3 (Kim & Seo 2024): ``LI * QR * RP`` on open-ended rows, ``(RAR / s) * (L_max / 100) * RP`` on
    constrained ones. Options: the fields of :class:`R3Config`, as ``config=`` or keyword arguments, or
    ``preset="paper"`` / ``"robust"`` (:data:`rewards.r3.config.PRESETS`) with keyword overrides."""

    default_name = "r3"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.reward(self.config).tolist()


class QueryRelevance(_R3Component):
    """QR alone, ``e(query) . e(response)``, as the reward uses it: copy guard applied when on, then measured from
    ``relevance_floor`` (negative below it); 1 when ``use_qr`` is off."""

    default_name = "r3.qr"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        assert factors.qr is not None
        return factors.qr.tolist()


class ReferenceRelevance(_R3Component):
    """RAR alone, ``e(reference) . e(response)``; None where the row has no reference."""

    default_name = "r3.rar"

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        assert factors.rar is not None
        return factors.rar.tolist()


class LengthIncentive(_R3Component):
    """LI alone, word tokens / 100 of the cut response (1 when ``use_li`` is off). Never loads the retriever."""

    default_name = "r3.li"
    needs_relevance = False

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.li.tolist()


class RepetitionPenalty(_R3Component):
    """RP alone, distinct / all word trigrams of the cut response (1 when ``use_rp`` is off). No retriever."""

    default_name = "r3.rp"
    needs_relevance = False

    def _values(self, factors: R3Factors) -> Sequence[float | None]:
        return factors.rp.tolist()


def r3_components(
    config: R3Config | None = None, *, retriever: Retriever | None = None, **options: Any
) -> list[_R3Component]:
    """The five R^3 objectives (r3, r3.qr, r3.rar, r3.li, r3.rp) sharing one scorer, so a batch is scored once."""
    cfg = R3Config.from_kwargs(config, **options)
    scorer = R3Scorer(cfg, retriever=retriever) if retriever is not None else shared_scorer(cfg)
    classes = (R3Reward, QueryRelevance, ReferenceRelevance, LengthIncentive, RepetitionPenalty)
    return [cls(scorer=scorer) for cls in classes]
