"""Secrets by reference: ``{"secret": "NAME"}`` in an ``api_call`` is read when the node
runs, never stored in the definition.

A secret ``NAME`` is the file ``<secrets_dir>/NAME`` (``TRADEFLOW_SECRETS_DIR``, e.g. a
mounted Kubernetes secret; one trailing newline stripped), else the environment variable
``TRADEFLOW_SECRET_NAME``: only variables of that prefix, so a workflow cannot read the
process's own configuration (``TRADEFLOW_REDIS_URL``, ``REDIS_PASSWORD``...). Names match
:data:`~tradeflow.domain.egress.SECRET_NAME`, so a reference can never name a file
outside the directory. A secret may only be sent to the hosts ``TRADEFLOW_SECRET_HOSTS``
binds it to (:class:`~tradeflow.domain.egress.SecretHosts`), checked before it is read.
Values are read on every use (a rotated secret counts at once) and never appear in an
error: only names, hosts and paths do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from tradeflow.domain.egress import SECRET_NAME, SecretHosts, is_secret_reference
from tradeflow.domain.errors import ConfigurationError

__all__ = ["ENV_PREFIX", "SecretReader"]

ENV_PREFIX: Final = "TRADEFLOW_SECRET_"
"""The secret ``NAME`` is the environment variable ``TRADEFLOW_SECRET_NAME``."""


class SecretReader:
    """Reads secrets from ``directory`` (optional) and ``environ`` (the process's
    environment unless given), for the hosts ``hosts`` binds them to."""

    def __init__(
        self,
        directory: str | None = None,
        environ: Mapping[str, str] | None = None,
        hosts: SecretHosts | None = None,
    ) -> None:
        self._directory = Path(directory) if directory else None
        self._environ = os.environ if environ is None else environ
        self._hosts = SecretHosts() if hosts is None else hosts

    def read(self, name: str) -> str:
        """The secret ``name``; ``ConfigurationError`` naming it (not its value) when it is
        neither a non-empty file in the directory nor a non-empty environment variable
        ``TRADEFLOW_SECRET_<name>``."""
        _check_name(name)
        value = self._from_file(name)
        if value is None:
            value = self._environ.get(ENV_PREFIX + name)
        if not value:
            where = (
                f"a file {name} in TRADEFLOW_SECRETS_DIR ({self._directory}) or "
                if self._directory is not None
                else ""
            )
            raise ConfigurationError(
                f"secret {name!r} is not set: expected {where}an environment variable "
                f"{ENV_PREFIX}{name} (non-empty)"
            )
        return value

    def _from_file(self, name: str) -> str | None:
        if self._directory is None:
            return None
        path = self._directory / name
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(
                f"secret {name!r}: cannot read {path}: {exc.strerror}"
            ) from None
        return text.removesuffix("\n").removesuffix("\r")

    def resolve(self, value: Any, host: str, used: set[str]) -> Any:
        """``value`` (a JSON value) with every secret reference in it, at any depth,
        replaced by the secret, for a request to ``host``; each secret read is added to
        ``used`` (what errors and results must then leave out). A secret not bound to
        ``host`` raises ``ConfigurationError`` naming it, the host and
        ``TRADEFLOW_SECRET_HOSTS``, before it is read."""
        if is_secret_reference(value):
            name = str(value["secret"])
            _check_name(name)
            refusal = self._hosts.refusal(name, host)
            if refusal is not None:
                raise ConfigurationError(refusal)
            secret = self.read(name)
            used.add(secret)
            return secret
        if isinstance(value, dict):
            return {key: self.resolve(item, host, used) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item, host, used) for item in value]
        return value


def _check_name(name: str) -> None:
    if not SECRET_NAME.fullmatch(name):
        raise ConfigurationError(
            f"secret name {name[:40]!r}: expected a name matching {SECRET_NAME.pattern}"
        )
