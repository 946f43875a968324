"""The throwaway credentials of ``benchmarks/federated_deployment.py --secure``: a real TLS handshake
against the certificate, and the SuperNode keys read by Flower's own loaders (the full federation over
TLS with node authentication takes a minute and runs in the script, not here)."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import _federation_credentials

    return _federation_credentials


def _handshake(tls: dict[str, Path], host: str) -> str:
    """Serve one TLS connection with the server certificate; connect as a client that trusts only the CA."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls["cert"], tls["key"])
    client_ctx = ssl.create_default_context(cafile=str(tls["ca"]))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=host) as conn:
                reply = conn.recv(2).decode()
        thread.join(10)
    return reply


def test_server_certificate_is_trusted_for_localhost_only(credentials, tmp_path):
    tls = credentials.make_tls_files(tmp_path)
    assert _handshake(tls, "localhost") == "ok"
    assert _handshake(tls, "127.0.0.1") == "ok"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, "coordinator.example.org")


def test_node_keys_load_with_flowers_own_loaders(credentials, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    private, public = credentials.make_node_keys(tmp_path, "site-0")
    # as flower-supernode --auth-supernode-private-key reads it, and as flwr supernode register reads the .pub
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    assert try_load_public_key(public) == public_key_to_bytes(key.public_key())
    other, _ = credentials.make_node_keys(tmp_path, "site-1")
    assert public_key_to_bytes(serialization.load_ssh_private_key(other.read_bytes(), None).public_key()) != \
        try_load_public_key(public)
