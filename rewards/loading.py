"""Loading scoring models (retrievers, reward models) as plain, whole modules.

Under a DeepSpeed ZeRO-3 run, transformers partitions every model built with `from_pretrained` while the run's
DeepSpeed config is registered (`is_deepspeed_zero3_enabled()`): a retriever or reward model loaded lazily
during training would get empty, partitioned weights that no ZeRO engine ever gathers ("'weight' must be 2-D").
Scoring models are not trained, each process holds its own copy, so they are loaded outside that state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def whole_model_loading() -> Iterator[None]:
    """Within the block, transformers builds models unpartitioned even during a ZeRO-3 run."""
    try:
        from transformers.integrations import deepspeed as hf_deepspeed
    except ImportError:  # pragma: no cover - transformers always has it in the supported range
        yield
        return
    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
