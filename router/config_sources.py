"""What ``check`` reads: a config file, or each router config embedded in a Kubernetes ConfigMap (``data`` keys
ending in ``.yaml`` or ``.yml``), with the offset that puts an embedded config's positions back in the manifest."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from router.config import RouterConfig, parse_config
from router.yamlpos import ConfigError, ConfigIssue, decode_text


@dataclass(frozen=True)
class ConfigSource:
    """One config's text, and where it sits in its file (0 and 0 for a file of its own)."""

    name: str  # what `check` prints: the file, or FILE[key] for a ConfigMap entry
    file: str
    text: str
    line_offset: int = 0
    col_offset: int = 0

    def parse(self, warnings: list[ConfigIssue]) -> RouterConfig:
        return parse_config(self.text, self.file, warnings=warnings)

    def locate(self, issue: ConfigIssue) -> ConfigIssue:
        """``issue`` at its position in the file."""
        if not (self.line_offset or self.col_offset):
            return issue
        return replace(issue, line=issue.line + self.line_offset, col=issue.col + self.col_offset)


def config_sources(path: str) -> list[ConfigSource]:
    """The configs in ``path``: itself, or the router configs of a ConfigMap. ConfigError if it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, 1, 1, "", f"cannot read config: {exc.strerror}")]) from None
    text = decode_text(raw, path)
    embedded = _configmap_entries(path, text)
    return embedded if embedded is not None else [ConfigSource(path, path, text)]


def _configmap_entries(path: str, text: str) -> list[ConfigSource] | None:
    """The router configs of a Kubernetes ConfigMap manifest; None if ``text`` is not one."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None  # not for us to report: parse_config says where the syntax breaks
    if not isinstance(root, yaml.MappingNode):
        return None
    fields: dict[Any, yaml.Node] = {k.value: v for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    kind, data = fields.get("kind"), fields.get("data")
    if not (isinstance(kind, yaml.ScalarNode) and kind.value == "ConfigMap" and isinstance(data, yaml.MappingNode)):
        return None
    lines = text.split("\n")
    out = []
    for key, value in data.value:
        if not (isinstance(key, yaml.ScalarNode) and str(key.value).endswith((".yaml", ".yml"))
                and isinstance(value, yaml.ScalarNode)):
            continue
        name = f"{path}[{key.value}]"
        first, indent = _literal_block(lines, value)
        if first is None:  # not a literal block: positions stay relative to the embedded text
            out.append(ConfigSource(name, name, value.value))
        else:
            out.append(ConfigSource(name, path, value.value, first, indent))
    return out


def _literal_block(lines: list[str], node: yaml.ScalarNode) -> tuple[int | None, int]:
    """(lines before the block's first line, its indentation) when ``node`` is a ``|`` block whose lines are the
    file's lines less that indentation; else (None, 0)."""
    if node.style != "|":
        return None, 0
    start = node.start_mark.line + 1  # the line after the "|" indicator
    content = node.value.split("\n")
    first = next((line for line in lines[start:start + len(content)] if line.strip()), None)
    if first is None:
        return None, 0
    indent = len(first) - len(first.lstrip(" "))
    for i, line in enumerate(content):
        if line and (start + i >= len(lines) or lines[start + i][indent:] != line):
            return None, 0
    return start, indent
