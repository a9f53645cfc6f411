"""The one way the project reads YAML: safe, bounded, strict about duplicate keys, with one-line errors.

Every YAML the project reads goes through `load_yaml` (text: `--set` values, `--strategy-options`) or
`read_yaml_file` (recipes, `--reward` specs, run folders' `config.yaml`). Before anything is built from the text,
one pass over the parser's events (no Python objects made yet) refuses:

- text longer than `MAX_BYTES`;
- nesting deeper than `MAX_DEPTH` once aliases are expanded (deep nesting would otherwise overflow Python's stack
  in the loader, in `dataclasses.asdict` or in `yaml.safe_dump`);
- more than `MAX_NODES` values, or more than `MAX_CHARS` characters of scalars, once aliases are expanded (an
  alias bomb loads as a small graph of shared objects, but anything that copies or writes it, such as the run's
  `config.yaml`, expands it exponentially);
- an alias to a collection that is still open (a recursive structure);
- a key repeated in one mapping, at any depth (YAML keeps the last one, silently dropping the first section).

Then the document is built with PyYAML's safe loader (libyaml's when installed): plain mappings, lists, strings,
numbers, booleans and null only; tags such as ``!!python/object`` are refused. Any problem is a `ConfigError`
``<source>: <reason>`` on one line, where `source` names the file or option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from alignment.errors import ConfigError

MAX_BYTES = 1 << 20  # 1 MiB of YAML text
MAX_DEPTH = 32  # nested mappings/lists, aliases expanded (a recipe needs about 7)
MAX_NODES = 20_000  # values, aliases expanded (a full recipe has about 150)
MAX_CHARS = 4 << 20  # characters of all scalars together, aliases expanded

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed; both are safe
_MERGE_KEY = "<<"


class YamlSyntaxError(ConfigError):
    """The text is not YAML at all (a `--set` value then stays a plain string); the limits raise ConfigError."""


class _Frame:
    """One open mapping or sequence while the events are walked."""

    __slots__ = ("anchor", "is_mapping", "nodes", "chars", "depth", "keys", "expect_key")

    def __init__(self, anchor: str | None, is_mapping: bool) -> None:
        self.anchor = anchor
        self.is_mapping = is_mapping
        self.nodes = 1
        self.chars = 0
        self.depth = 1  # levels of this collection and below, aliases expanded
        self.keys: set[str] = set()
        self.expect_key = True


def _line(event: Any) -> str:
    mark = getattr(event, "start_mark", None)
    return f"line {mark.line + 1}: " if mark is not None else ""


def _check_events(text: str, source: str) -> None:
    """Walk the parser's events once and refuse what the module docstring lists (ConfigError)."""
    stack: list[_Frame] = []
    sizes: dict[str, tuple[int, int, int]] = {}  # anchor -> (nodes, chars, depth) of its value, expanded
    scalar_keys: dict[str, str] = {}  # anchor of a scalar -> its text (an alias used as a mapping key)
    totals = [0, 0]  # nodes and scalar characters of the whole document so far, aliases expanded

    def count(nodes: int, chars: int, depth: int, event: Any) -> None:
        """Count what an event adds to the expanded document; refuse it past the limits."""
        totals[0] += nodes
        totals[1] += chars
        if totals[0] > MAX_NODES:
            raise ConfigError(
                f"{source}: {_line(event)}more than {MAX_NODES} values once aliases are expanded (an alias bomb?)"
            )
        if totals[1] > MAX_CHARS:
            raise ConfigError(
                f"{source}: {_line(event)}more than {MAX_CHARS} characters once aliases are expanded (an alias bomb?)"
            )
        if len(stack) + depth > MAX_DEPTH:
            raise ConfigError(f"{source}: {_line(event)}nested deeper than {MAX_DEPTH} levels")

    def into_parent(nodes: int, chars: int, depth: int) -> None:
        if stack:
            frame = stack[-1]
            frame.nodes += nodes
            frame.chars += chars
            frame.depth = max(frame.depth, depth + 1)

    def key_seen(key: str | None, event: Any) -> None:
        """Count a value inside a mapping: every other one is a key, which must not repeat."""
        if not stack or not stack[-1].is_mapping:
            return
        frame = stack[-1]
        if frame.expect_key and key is not None and key != _MERGE_KEY:
            if key in frame.keys:
                shown = key if len(key) <= 60 else key[:57] + "..."
                raise ConfigError(
                    f"{source}: {_line(event)}duplicate key {shown!r} in one mapping (YAML would silently keep only "
                    "the last one); merge the two"
                )
            frame.keys.add(key)
        frame.expect_key = not frame.expect_key

    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.ScalarEvent):
                key_seen(event.value, event)
                count(1, len(event.value), 0, event)
                into_parent(1, len(event.value), 0)
                if event.anchor is not None:
                    sizes[event.anchor] = (1, len(event.value), 0)
                    scalar_keys[event.anchor] = event.value
            elif isinstance(event, yaml.AliasEvent):
                if any(frame.anchor == event.anchor for frame in stack):
                    raise ConfigError(f"{source}: {_line(event)}alias *{event.anchor} refers to itself (a loop)")
                key_seen(scalar_keys.get(event.anchor), event)
                nodes, chars, depth = sizes.get(event.anchor, (1, 0, 0))  # undefined: the loader names it
                count(nodes, chars, depth, event)
                into_parent(nodes, chars, depth)
            elif isinstance(event, yaml.CollectionStartEvent):
                key_seen(None, event)  # a mapping or list used as a key is refused later (not a string)
                count(1, 0, 1, event)
                stack.append(_Frame(event.anchor, isinstance(event, yaml.MappingStartEvent)))
            elif isinstance(event, yaml.CollectionEndEvent):
                frame = stack.pop()
                if frame.anchor is not None:
                    sizes[frame.anchor] = (frame.nodes, frame.chars, frame.depth)
                into_parent(frame.nodes, frame.chars, frame.depth)
    except yaml.YAMLError as err:
        if "maximum nesting depth" in str(err):  # libyaml's own limit can fire before the events reach ours
            raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels") from None
        raise YamlSyntaxError(f"{source}: not valid YAML ({_yaml_reason(err)})") from None


def _yaml_reason(err: BaseException) -> str:
    """PyYAML's error as one short line: what went wrong and where (line, column)."""
    problem = getattr(err, "problem", None)
    if problem:
        mark = getattr(err, "problem_mark", None)
        context = getattr(err, "context", None)
        text = f"{context}: {problem}" if context else str(problem)
        if mark is not None:
            text += f" at line {mark.line + 1}, column {mark.column + 1}"
    else:
        text = str(err)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def load_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML document with the checks of the module docstring; ConfigError ``<source>: ...``."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise ConfigError(f"{source}: larger than {MAX_BYTES} bytes; a recipe or option is far smaller")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 text (byte {err.start})") from None
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_BYTES} bytes; a recipe or option is far smaller")
    _check_events(text, source)
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (SafeLoader or CSafeLoader)
    except yaml.YAMLError as err:
        raise YamlSyntaxError(f"{source}: not valid YAML ({_yaml_reason(err)})") from None
    except (ValueError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{source}: a value cannot be read ({_yaml_reason(err)})") from None


def read_yaml_file(path: str | Path, source: str | None = None) -> Any:
    """Read and parse the YAML file `path` (see `load_yaml`); `source` names it in errors (default: the path).

    A missing file, a folder or an unreadable one is a ConfigError too; more than `MAX_BYTES` is refused before
    the file is read.
    """
    path = Path(path)
    source = source or str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ConfigError(f"{source}: cannot be read ({reason})") from None
    return load_yaml(data, source)


def check_tree(data: Any, source: str) -> None:
    """Refuse a loaded mapping (a recipe with its `--set` overrides applied) nested deeper than `MAX_DEPTH` or
    holding more than `MAX_NODES` values, shared values counted each time (no recursion: any depth is safe)."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    nodes = 0
    while pending:
        node, depth = pending.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{source}: more than {MAX_NODES} values")
        if isinstance(node, dict | list | tuple):
            if depth > MAX_DEPTH:
                raise ConfigError(f"{source}: nested deeper than {MAX_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, depth + 1) for child in children)
