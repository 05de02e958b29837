"""The local stack's Gate TLS: a CA, Gate's server certificate and the functions' X.509 client certificate.

Gate's x509 mode (gate-x509 ``X509Config``) authenticates a caller by the client certificate its TLS handshake
presents, verified against the CA Gate trusts; the certificate's CN is the user. The stack makes one CA, signs the
Gate stand-in's certificate and cd4ml's client certificate with it, and gives the functions a trust bundle (the
system's roots plus this CA) through ``REQUESTS_CA_BUNDLE``, where production trusts Gate's public certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

CLIENT_NAME = "cd4ml-functions"  # the Spinnaker user the functions' certificate names (its CN)


@dataclass(frozen=True)
class GateTls:
    """The files of the stack's Gate TLS."""

    ca: Path  # the CA certificate (Gate trusts client certificates it signed; clients trust Gate's)
    server: Path  # Gate's certificate and key, PEM
    client: Path  # the functions' client certificate and key, PEM (CD4ML_GATE_AUTH=x509:file:...)
    trust: Path  # the system's roots and the CA: REQUESTS_CA_BUNDLE of the processes that call Gate


def _name(common_name: str) -> object:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: object, key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    cert_pem: bytes = certificate.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]
    key_pem: bytes = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem + key_pem


def make(directory: Path, client_file: Path) -> GateTls:
    """Write a fresh CA, Gate's certificate (127.0.0.1, localhost) and the client certificate to ``client_file``."""
    import certifi
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    client_file.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("cd4ml local Gate CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)  # type: ignore[arg-type]
        .issuer_name(ca_name)  # type: ignore[arg-type]
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> bytes:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))  # type: ignore[arg-type]
            .issuer_name(ca_name)  # type: ignore[arg-type]
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _pem(builder.sign(ca_key, hashes.SHA256()), key)

    tls = GateTls(directory / "ca.pem", directory / "server.pem", client_file, directory / "trust.pem")
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    tls.ca.write_bytes(ca_pem)
    server_sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    for path, pem in (
        (tls.server, leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH, server_sans)),
        (tls.client, leaf(CLIENT_NAME, ExtendedKeyUsageOID.CLIENT_AUTH, [])),
    ):
        path.write_bytes(pem)
        path.chmod(0o600)
    tls.trust.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca_pem)
    return tls


def client_context(stack_root: Path) -> ssl.SSLContext:
    """A TLS context that trusts the stack's Gate and presents the functions' client certificate (for tests, tools)."""
    context = ssl.create_default_context(cafile=str(stack_root / "gate" / "tls" / "ca.pem"))
    context.load_cert_chain(stack_root / "secrets" / "gate-client.pem")
    return context
