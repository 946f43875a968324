"""Throwaway credentials for a federation on one machine: a CA, a SuperLink certificate, SuperNode keys.

Flower 1.42 serves the SuperLink over HTTPS with a PEM certificate and key (``--ssl-certfile``,
``--ssl-keyfile``) and the CA that signed it (``--ssl-ca-certfile``, which SuperNodes and ``flwr`` get as
their root certificate). A SuperNode proves who it is with an elliptic-curve key on a NIST curve in
OpenSSH format: its private key for ``flower-supernode --auth-supernode-private-key`` and its public key
for ``flwr supernode register``. ``cryptography`` is one of Flower's own dependencies, so it is there
wherever Flower is. These files are for a test on one machine only; real sites use their own PKI.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_tls_files", "make_node_keys"]


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _certificate(subject: str, public_key, issuer: x509.Name | None, signer: ec.EllipticCurvePrivateKey,
                 ca: bool, days: int = 2) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        # gRPC and Python's ssl check the host against the subject alternative names, never the common name
        builder = (builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))
    return builder.sign(signer, hashes.SHA256())


def make_tls_files(folder: Path) -> dict[str, Path]:
    """Write ``ca.crt``, ``server.pem`` and ``server.key`` (valid for localhost / 127.0.0.1) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca = _certificate("medaug throwaway CA", ca_key.public_key(), None, ca_key, ca=True)
    server = _certificate("localhost", server_key.public_key(), ca.subject, ca_key, ca=False)
    files = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, files["key"])
    return files


def make_node_keys(folder: Path, name: str) -> tuple[Path, Path]:
    """Write a P-384 key pair in OpenSSH format, ``<name>`` (private) and ``<name>.pub``; return both paths."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public
