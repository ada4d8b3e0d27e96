"""YAML to plain Python, remembering the line and column of every value and key.

Config errors must point at ``file:line:col``; PyYAML's node tree has the marks, so we build
the objects from nodes ourselves. Duplicate keys are errors (PyYAML silently keeps the last),
and ``${VAR}`` / ``${VAR:-default}`` are substituted from the environment in scalar strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

Path = tuple[str | int, ...]
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One config error, located."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted field path, e.g. models.fraud.lanes.realtime
    message: str

    def __str__(self) -> str:
        where = self.path or "(root)"
        return f"{self.file}:{self.line}:{self.col}: {where}: {self.message}"


class ConfigError(Exception):
    """Every error found in a config file, each with its position."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


@dataclass
class Located:
    """A YAML document as plain data plus the (line, col) of every path in it."""

    data: Any
    positions: dict[Path, tuple[int, int]]
    key_positions: dict[Path, tuple[int, int]]

    def position(self, path: Path) -> tuple[int, int]:
        """The closest known position for ``path``: itself, else its nearest ancestor."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if prefix in self.positions:
                return self.positions[prefix]
        return (1, 1)

    def key_position(self, path: Path) -> tuple[int, int]:
        return self.key_positions.get(path) or self.position(path)


def format_path(path: Path) -> str:
    return ".".join(str(p) for p in path)


class _Builder:
    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.positions: dict[Path, tuple[int, int]] = {}
        self.key_positions: dict[Path, tuple[int, int]] = {}
        self.issues: list[ConfigIssue] = []

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.issues.append(ConfigIssue(self.file, mark.line + 1, mark.column + 1, format_path(path), message))

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build_scalar(key_node, path)
                if not isinstance(key, str | int | float | bool) or key is None:
                    self._issue(key_node, path, "mapping keys must be scalars")
                    continue
                key_str = str(key) if not isinstance(key, str) else key
                child = (*path, key_str)
                if key_str in out:
                    self._issue(key_node, child, "duplicate key")
                    continue
                self.key_positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key_str] = self.build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.build_scalar(node, path)

    def build_scalar(self, node: yaml.Node, path: Path) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return None
        value = _LOADER.construct_object(node)
        _LOADER.constructed_objects.clear()
        if isinstance(value, str):
            return self.substitute(value, node, path)
        return value

    def substitute(self, text: str, node: yaml.Node, path: Path) -> str:
        if "$" not in text:
            return text

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self._issue(node, path, f"environment variable {name} is not set (write ${{{name}:-default}})")
            return ""

        return _ENV.sub(repl, text)


_LOADER = yaml.SafeLoader("")


def load_located(text: str, file: str, env: Mapping[str, str] | None = None) -> Located:
    """Parse one YAML document. Raises ConfigError listing every syntax, duplicate-key and env error."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([ConfigIssue(file, line, col, "", f"YAML syntax: {exc.problem or exc}")]) from None
    builder = _Builder(file, os.environ if env is None else env)
    data = {} if node is None else builder.build(node, ())
    if builder.issues:
        raise ConfigError(builder.issues)
    return Located(data, builder.positions, builder.key_positions)
