"""A reward module whose import has a visible effect (it writes ALIGN_TEST_IMPORT_SENTINEL), to show when a recipe
naming it imports it: when the composer is built, not while the recipe is loaded (tests/test_security.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if os.environ.get("ALIGN_TEST_IMPORT_SENTINEL"):
    Path(os.environ["ALIGN_TEST_IMPORT_SENTINEL"]).write_text("imported", encoding="utf-8")


def reward(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    return [1.0] * len(completions)
