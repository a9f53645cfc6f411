"""Scripts that build the project's shipped assets (`python -m tools.tiny_policy`, `python -m tools.preference_pairs`);
not part of the installed package."""
