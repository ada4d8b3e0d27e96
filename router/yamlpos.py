"""YAML to plain Python, remembering the line and column of every value and key.

Config errors must point at ``file:line:col``; PyYAML's node tree has the marks, so we build
the objects from nodes ourselves. Duplicate keys are errors (PyYAML silently keeps the last),
and ``${VAR}`` / ``${VAR:-default}`` are substituted from the environment in scalar strings.

Whatever the file holds, the outcome is a value or a ConfigError, never another exception: bytes that are
not UTF-8, characters YAML refuses, tags we do not know (``!foo``) or values their tag refuses (``!!int abc``),
nesting deeper than ``MAX_DEPTH`` and aliases that expand past ``MAX_VALUES`` values (the "billion laughs")
are all errors at their position.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]
MAX_DEPTH = 64  # nesting of mappings and lists; a config needs about 8, Python's stack far more than 64
MAX_VALUES = 100_000  # values built, aliases expanded: bounds time and memory whatever the anchors do
_MAP_TAGS = frozenset({"tag:yaml.org,2002:map"})
_SEQ_TAGS = frozenset({"tag:yaml.org,2002:seq"})
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One config error, located."""

    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted field path, e.g. models.fraud.lanes.realtime
    message: str
    severity: str = "error"  # or "warning": the config works, but not as written (see router.config_checks)

    def __str__(self) -> str:
        where = self.path or "(root)"
        kind = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {where}: {kind}{self.message}"


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
    issues: list[ConfigIssue] = field(default_factory=list)  # found while building, with keep_going

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
        self.values = 0

    def _issue(self, node: yaml.Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.issues.append(ConfigIssue(self.file, mark.line + 1, mark.column + 1, format_path(path), message))

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        self.values += 1
        if self.values > MAX_VALUES:
            raise _TooBig(node, path, f"the document expands to more than {MAX_VALUES} values (aliases?)")
        if len(path) > MAX_DEPTH:  # a recursive alias (&a [*a]) too
            raise _TooBig(node, path, f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode) and node.tag not in _MAP_TAGS | _SEQ_TAGS:
            self._issue(node, path, f"unsupported tag {_short_tag(node.tag)!r}")
            return None
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
        try:
            value = _LOADER.construct_object(node)
        except yaml.constructor.ConstructorError as exc:  # an unknown tag (!foo), a merge key (<<)
            merge = node.tag == "tag:yaml.org,2002:merge"
            self._issue(node, path, "merge keys (<<) are not supported" if merge
                        else f"unsupported tag {_short_tag(node.tag)!r}" if "constructor" in str(exc.problem)
                        else str(exc.problem or "invalid value"))
            return None
        except (ValueError, TypeError, OverflowError) as exc:  # !!int abc, !!timestamp 2020-13-45, 5,000 digits
            self._issue(node, path, f"invalid {_short_tag(node.tag)} value: {exc}")
            return None
        finally:
            _LOADER.constructed_objects.clear()
        if isinstance(value, str):
            if not _encodable(value):
                self._issue(node, path, "a string with an unpaired surrogate escape (\\ud800-\\udfff)")
                return None
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


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, path: Path, message: str) -> None:
        super().__init__(message)
        self.node, self.path, self.message = node, path, message


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _line_col(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of character ``index`` of ``text``."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def decode_text(data: bytes, file: str) -> str:
    """A config file's bytes as text: UTF-8 (with or without a BOM), else a ConfigError at the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        col = len(data[start:exc.start].decode("utf-8", "replace")) + 1
        raise ConfigError([ConfigIssue(file, line, col, "", f"not UTF-8: byte 0x{data[exc.start]:02x} cannot "
                                       "start or continue a character here")]) from None


def _syntax_issue(text: str, file: str, exc: yaml.YAMLError) -> ConfigIssue:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (control characters...)
        line, col = _line_col(text, exc.position)
        return ConfigIssue(file, line, col, "", f"YAML syntax: character #x{exc.character:04x} is not allowed "
                           "in YAML (control characters must be written as escapes in double quotes)")
    if isinstance(exc, yaml.MarkedYAMLError):
        opened = exc.context_mark
        if opened is not None and exc.context == "while scanning a quoted scalar":
            # the scanner only notices at the end of the file; the mistake is where the quote opens
            quote = text[opened.index] if opened.index < len(text) else '"'
            return ConfigIssue(file, opened.line + 1, opened.column + 1, "",
                               f"YAML syntax: this {quote} quote is never closed")
        mark = exc.problem_mark or opened
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = f"YAML syntax: {exc.problem or exc}"
        left_open = _open_quote_before(text, mark)
        if left_open is not None:  # a quote left open swallows the lines after it: the mistake is where it opens
            (q_line, q_col), char = left_open
            return ConfigIssue(file, q_line, q_col, "", f"YAML syntax: this {char} quote runs on over several lines; "
                               f"is it closed? (then: {exc.problem or exc}, at line {line}, column {col})")
        if opened is not None and mark is not opened and exc.context and exc.context.startswith("while parsing a flow"):
            what = exc.context.removeprefix("while parsing a ")
            message += f" (in the {what} opened at line {opened.line + 1}, column {opened.column + 1})"
        return ConfigIssue(file, line, col, "", message)
    return ConfigIssue(file, 1, 1, "", f"YAML syntax: {exc}")


def _open_quote_before(text: str, mark: Any) -> tuple[tuple[int, int], str] | None:
    """The first quoted string before ``mark`` that spans several lines (likely a quote left open), if any."""
    if mark is None:
        return None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            start, end = token.start_mark, token.end_mark
            if (start.line, start.column) >= (mark.line, mark.column):
                return None
            if isinstance(token, yaml.ScalarToken) and token.style in ('"', "'") and end.line > start.line:
                return (start.line + 1, start.column + 1), token.style
    except yaml.YAMLError:
        return None
    return None


def _check_depth(text: str, file: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before composing: PyYAML's composer recurses once per level."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
                raise ConfigError([ConfigIssue(file, line, col, "", f"nesting deeper than {MAX_DEPTH} levels")])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def load_located(text: str, file: str, env: Mapping[str, str] | None = None, *, keep_going: bool = False) -> Located:
    """Parse one YAML document. Raises ConfigError listing every syntax, duplicate-key and env error; with
    ``keep_going``, duplicate keys (the first one kept) and missing variables (replaced by "") are returned in
    ``Located.issues`` instead, so the caller can report them beside the errors of the rest of the file."""
    try:
        _check_depth(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_issue(text, file, exc)]) from None
    builder = _Builder(file, os.environ if env is None else env)
    try:
        data = {} if node is None else builder.build(node, ())
    except _TooBig as exc:
        builder._issue(exc.node, exc.path, exc.message)
        raise ConfigError(builder.issues) from None
    if builder.issues and not keep_going:
        raise ConfigError(builder.issues)
    return Located(data, builder.positions, builder.key_positions, builder.issues)
