"""Where recipe paths point: ``builtin:`` assets shipped inside the package, else the file system.

Paths may start with ``builtin:`` to name files shipped inside the package (``builtin:tiny-policy``,
``builtin:quickstart_prompts.jsonl``); other relative paths are taken from the current directory first,
then from the recipe's own folder.
"""

from __future__ import annotations

from pathlib import Path

from alignment.errors import ConfigError

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_ASSETS = {"tiny-policy": "tiny_policy"}


def resolve_path(value: str, base_dir: Path | None, where: str) -> str:
    """Resolve a recipe path: ``builtin:NAME`` -> packaged asset, relative -> CWD then recipe folder.

    A path the operating system cannot even look up (too long, NUL byte) is a ConfigError naming `where`.
    """
    try:
        return _resolve_path(value, base_dir, where)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        shown = repr(value) if len(value) <= 80 else repr(value[:77] + "...")
        raise ConfigError(f"{where}: {shown} is not a usable path ({reason})") from None


def _resolve_path(value: str, base_dir: Path | None, where: str) -> str:
    if value.startswith("builtin:"):
        name = value[len("builtin:") :]
        candidate = ASSETS_DIR / BUILTIN_ASSETS.get(name, name)
        if not candidate.exists():
            shipped = sorted(list(BUILTIN_ASSETS) + [p.name for p in ASSETS_DIR.glob("*.jsonl")])
            raise ConfigError(f"{where}: no built-in asset {name!r}; built-ins: {', '.join(shipped)}")
        return str(candidate)
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists() or base_dir is None:
        resolved = path
    else:
        resolved = base_dir / path if (base_dir / path).exists() else path
    if not resolved.exists():
        raise ConfigError(f"{where}: {value!r} does not exist (looked in {Path.cwd()} and {base_dir})")
    return str(resolved)
