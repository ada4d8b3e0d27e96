"""The error a policy raises for params that validate as types but are still wrong."""

from __future__ import annotations

PolicyPath = tuple[str | int, ...]


class PolicyBuildError(Exception):
    """One or more problems in a policy's params. Each path is relative to ``params``, so the config
    loader can point at the line."""

    def __init__(self, message: str, path: PolicyPath = (), *, unknown_type: bool = False,
                 issues: list[tuple[PolicyPath, str]] | None = None) -> None:
        self.issues = issues if issues is not None else [(path, message)]
        super().__init__("; ".join(m for _, m in self.issues))
        self.message = message
        self.path = path
        self.unknown_type = unknown_type
