"""Which model, and which rule, a request on an extra path belongs to: exact paths first, then paths with
``{name}`` segments, then prefixes, longest first. Nothing else is forwarded.

A prefix never reaches a model server's admin API (KServe V2's model repository: load, unload; Triton's
logging, tracing and shared memory; vLLM's LoRA loading): those paths are forwarded only when declared exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from router.protocols import PathRule

# Admin URLs of common model servers, never covered by a prefix (see the module's docstring).
ADMIN_PATHS = ("/v2/repository", "/v2/logging", "/v2/trace", "/v2/systemsharedmemory", "/v2/cudasharedmemory",
               "/v1/load_lora_adapter", "/v1/unload_lora_adapter")

MethodRules = Mapping[str, PathRule]  # method -> rule, for one pattern


def _template(pattern: str) -> re.Pattern[str]:
    parts = [("[^/]+" if seg.startswith("{") else re.escape(seg)) for seg in pattern.split("/")]
    return re.compile("/".join(parts) + r"\Z")


class PathTable:
    """The extra paths of every model of one config version."""

    def __init__(self, rules: Iterable[PathRule]) -> None:
        by_pattern: dict[str, dict[str, PathRule]] = {}
        owner: dict[str, str] = {}
        for rule in rules:
            if owner.setdefault(rule.pattern, rule.model) != rule.model:
                continue  # a preset's shared path (health...): the first model keeps it (the config check allows it)
            methods = by_pattern.setdefault(rule.pattern, {})
            for method in sorted(rule.methods):
                methods.setdefault(method, rule)
        self.exact: dict[str, MethodRules] = {}
        self.templates: list[tuple[re.Pattern[str], MethodRules]] = []
        prefixes: list[tuple[str, MethodRules]] = []
        for pattern, methods in by_pattern.items():
            if pattern.endswith("*"):
                prefixes.append((pattern[:-1], methods))
            elif "{" in pattern:
                self.templates.append((_template(pattern), methods))
            else:
                self.exact[pattern] = methods
        self.prefixes = sorted(prefixes, key=lambda p: -len(p[0]))

    def __bool__(self) -> bool:
        return bool(self.exact or self.templates or self.prefixes)

    def match(self, path: str) -> MethodRules | None:
        """The rules (by method) of the pattern ``path`` falls under, or None: not a model's path."""
        found = self.exact.get(path)
        if found is not None:
            return found
        for regex, methods in self.templates:
            if regex.match(path):
                return methods
        for prefix, methods in self.prefixes:
            if path.startswith(prefix):
                if any(path.startswith(admin) and not prefix.startswith(admin) for admin in ADMIN_PATHS):
                    return None
                return methods
        return None
