"""The bus's credentials and its server's configuration, made once per installation in the data
directory, and read back by each process for its role.

    <data_dir>/ca.pem, ca.key              the installation CA (store/certificate_authority.py)
    <data_dir>/bus/<role>.password         one password per role, 0600: the client side
    <data_dir>/bus/server/                 what the NATS server reads (mounted into its container)
        nats-server.conf                   listeners, JetStream, TLS, users with bcrypt hashes
        server.pem, server.key             its certificate from the installation CA
        hashes.json                        the bcrypt hashes, kept so the config stays stable

Run `python -m temps_shared.bus.credentials --data-dir DIR …` (deploy/up.sh does) before the
server starts; it is idempotent and prints `changed` when the server should reload.
"""

from __future__ import annotations

import argparse
import json
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bcrypt
from cryptography import x509

from temps_shared.bus.permissions import role_permissions
from temps_shared.crypto import generate_password, write_private_file
from temps_shared.messages import Role
from temps_shared.store.certificate_authority import CA_CERT_FILE, load_or_create_ca_files
from temps_shared.tls import issue_server_certificate

# The names clients dial the server by: its compose service name, and loopback.
SERVER_DNS_NAMES = ["nats", "localhost"]
SERVER_IP_ADDRESSES = ["127.0.0.1"]
RENEW_BEFORE = timedelta(days=30)
BCRYPT_ROUNDS = 10  # checked once per connection


def bus_dir(data_dir: Path) -> Path:
    return data_dir / "bus"


def server_dir(data_dir: Path) -> Path:
    return bus_dir(data_dir) / "server"


def password_file(data_dir: Path, role: Role) -> Path:
    return bus_dir(data_dir) / f"{role}.password"


@dataclass(frozen=True)
class ServerLayout:
    """Where the server listens and keeps its files, as the server process sees them."""

    listen: str  # host:port
    store_dir: str  # JetStream storage
    files_dir: str  # where server_dir() is mounted (the same path when not in a container)
    http: str | None = None  # monitoring listener (health checks), loopback only


@dataclass(frozen=True)
class ClientCredentials:
    user: str
    password: str
    ca_file: Path

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def client_credentials(data_dir: Path, role: Role) -> ClientCredentials:
    path = password_file(data_dir, role)
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no bus credentials for {role} at {path}: run `make up` (or "
            "`python -m temps_shared.bus.credentials`) to create them"
        ) from None
    return ClientCredentials(user=str(role), password=password, ca_file=data_dir / CA_CERT_FILE)


def _role_passwords(data_dir: Path) -> dict[Role, str]:
    passwords = {}
    for role in Role:
        path = password_file(data_dir, role)
        write_private_file(path, generate_password(40), exclusive=True)  # kept if it exists
        passwords[role] = path.read_text().strip()
    return passwords


def _role_hashes(data_dir: Path, passwords: dict[Role, str]) -> dict[Role, str]:
    """bcrypt hashes, reused while they still match, so the configuration only changes when a
    password or a permission does."""
    path = server_dir(data_dir) / "hashes.json"
    try:
        known: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    hashes = {}
    for role, password in passwords.items():
        old = known.get(role)
        if old is None or not bcrypt.checkpw(password.encode(), old.encode()):
            old = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
        hashes[role] = old
    write_private_file(path, json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    return hashes


def _ensure_server_certificate(data_dir: Path) -> bool:
    ca = load_or_create_ca_files(data_dir)
    cert_path, key_path = server_dir(data_dir) / "server.pem", server_dir(data_dir) / "server.key"
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        issuer = x509.load_pem_x509_certificate(ca.cert_pem.encode())
        fresh = cert.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
        if fresh and cert.issuer == issuer.subject:
            return False
    issued = issue_server_certificate(ca, SERVER_DNS_NAMES, SERVER_IP_ADDRESSES)
    write_private_file(key_path, issued.key_pem)
    write_private_file(cert_path, issued.cert_pem + ca.cert_pem)  # with its chain
    return True


def server_config(layout: ServerLayout, hashes: dict[Role, str]) -> str:
    """nats-server's configuration (its format accepts JSON values)."""
    users = [
        {"user": str(role), "password": hashes[role], "permissions": role_permissions(role)}
        for role in Role
    ]
    lines = [
        "# Generated by temps_shared.bus.credentials: edits are overwritten.",
        f"listen: {json.dumps(layout.listen)}",
        f"jetstream: {json.dumps({'store_dir': layout.store_dir})}",
        "tls: "
        + json.dumps(
            {
                "cert_file": f"{layout.files_dir}/server.pem",
                "key_file": f"{layout.files_dir}/server.key",
                "timeout": 5,
            }
        ),
        f"authorization: {json.dumps({'users': users}, indent=2)}",
    ]
    if layout.http is not None:
        lines.insert(2, f"http: {json.dumps(layout.http)}")
    return "\n".join(lines) + "\n"


def ensure_bus_files(data_dir: Path, layout: ServerLayout) -> bool:
    """Create what is missing and (re)write the server configuration; True when anything the
    server reads changed (a running server should reload)."""
    for folder in (bus_dir(data_dir), server_dir(data_dir)):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
    cert_changed = _ensure_server_certificate(data_dir)
    config = server_config(layout, _role_hashes(data_dir, _role_passwords(data_dir)))
    config_path = server_dir(data_dir) / "nats-server.conf"
    if config_path.exists() and config_path.read_text() == config:
        return cert_changed
    write_private_file(config_path, config)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--listen", default="0.0.0.0:4222")
    parser.add_argument("--store-dir", default="/data")
    parser.add_argument("--files-dir", default="/etc/nats")
    parser.add_argument("--http", default="127.0.0.1:8222")
    args = parser.parse_args()
    layout = ServerLayout(args.listen, args.store_dir, args.files_dir, args.http or None)
    print("changed" if ensure_bus_files(args.data_dir, layout) else "unchanged")


if __name__ == "__main__":
    main()
