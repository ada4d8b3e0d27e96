"""Which config is in force, and whether the file on disk still says the same: for ``router_build_info`` and
``router_config_file_applied``, so an alert holds for as long as a rejected edit leaves the two apart."""

from __future__ import annotations

import hashlib
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from router.config import RouterConfig, parse_config
from router.yamlpos import ConfigError


def router_version() -> str:
    try:
        return version("inference-router")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def config_hash(cfg: RouterConfig) -> str:
    """12 hex digits of the SHA-256 of the validated config: equal configs hash equal, whatever their comments
    or key order of defaults; a change of any value (a secret included, so its hash is no lookup table) shows."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


class ConfigFile:
    """The config file, hashed as it would load now. The file is read on every call (a scrape) but parsed only
    when its bytes changed; a file that does not load hashes to None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._bytes_digest: bytes | None = None
        self._hash: str | None = None

    def current_hash(self) -> str | None:
        try:
            raw = self.path.read_bytes()
        except OSError:
            self._bytes_digest = None
            return None
        digest = hashlib.sha256(raw).digest()
        if digest != self._bytes_digest:
            self._bytes_digest = digest
            try:
                self._hash = config_hash(parse_config(raw.decode("utf-8"), str(self.path), os.environ))
            except (ConfigError, UnicodeDecodeError):
                self._hash = None
        return self._hash
