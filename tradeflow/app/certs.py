"""A small certificate authority for local stacks and tests: a CA, and certificates that
name a tradeflow principal (``spiffe://tradeflow/<role>/<name>`` as their URI SAN).

Production certificates come from the operator's own PKI (cert-manager, Vault...), with
the same URI SAN: see ``docs/SECURITY.md``. This module only backs ``tradeflow stack up``
(a throwaway CA under the stack's directory) and the tests (certificates made at test time).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tradeflow.domain.principals import Principal, Role

__all__ = ["Authority", "Issued"]

_VALID = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """``<name>.crt`` and ``<name>.key`` (mode 0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.crt", directory / f"{name}.key"
        cert.write_bytes(self.cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(self.key_pem)
        return cert, key


class Authority:
    """A self-signed CA that issues principals' certificates."""

    def __init__(self, common_name: str = "tradeflow local CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = dt.datetime.now(dt.UTC)
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + _VALID)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        principal: Principal | None,
        *,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        valid: dt.timedelta = _VALID,
    ) -> Issued:
        """A certificate for ``principal`` (none: a bare certificate), usable as a client;
        a service's (an executor principal's, or a bare one) also serves ``hosts``. A
        bot's, an operator's or an admin's never serves: it cannot pose as a service."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        serves = principal is None or principal.role is Role.EXECUTOR
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if serves:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        cn = principal.uri if principal is not None else hosts[0]
        names: list[x509.GeneralName] = [_host(host) for host in hosts] if serves else []
        if principal is not None:
            names.append(x509.UniformResourceIdentifier(principal.uri))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + valid)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )


def _host(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
