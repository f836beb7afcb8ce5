"""The built-in backup store's server certificate, issued by the installation CA (the data
directory's `ca.pem`, as for the bus) before the store starts:

    <data_dir>/backup_store_tls/server.pem   certificate + CA chain
    <data_dir>/backup_store_tls/server.key   its key

Names: `backup-store` (the compose network), `localhost` and 127.0.0.1 (its port published on
the host's loopback, for the gateway and `temps backup`). SeaweedFS runs as an unprivileged user
that reads them through a read-only bind mount: the folder and files are world-readable, the
data directory around them (0700) is what keeps them private on the host.

Run `python -m temps_shared.backups.store_certificate --data-dir DIR` (deploy/up.sh does); it
is idempotent and prints `changed` when a running store should restart to load a new one.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from temps_shared.store.certificate_authority import load_or_create_ca_files
from temps_shared.tls import issue_server_certificate

TLS_DIR = "backup_store_tls"
DNS_NAMES = ["backup-store", "localhost"]
IP_ADDRESSES = ["127.0.0.1"]
RENEW_BEFORE = timedelta(days=30)


def tls_dir(data_dir: Path) -> Path:
    return data_dir / TLS_DIR


def _current(cert_path: Path, ca_pem: str) -> bool:
    """The certificate there is the CA's, names what it must, and is not about to expire."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    issuer = x509.load_pem_x509_certificate(ca_pem.encode())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = set(sans.get_values_for_type(x509.DNSName))
    addresses = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    try:
        cert.verify_directly_issued_by(issuer)  # signed by this CA (not one of the same name)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return (
        names >= set(DNS_NAMES)
        and addresses >= set(IP_ADDRESSES)
        and cert.not_valid_after_utc - datetime.now(UTC) > RENEW_BEFORE
    )


def _write_readable(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def ensure_store_certificate(data_dir: Path) -> bool:
    """Issue the store's certificate when missing, stale or from another CA; True if issued."""
    ca = load_or_create_ca_files(data_dir)
    folder = tls_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    if key_path.exists() and _current(cert_path, ca.cert_pem):
        return False
    issued = issue_server_certificate(ca, DNS_NAMES, IP_ADDRESSES)
    _write_readable(key_path, issued.key_pem)  # the key first: a new certificate finds it
    _write_readable(cert_path, issued.cert_pem + ca.cert_pem)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    print("changed" if ensure_store_certificate(args.data_dir) else "unchanged")


if __name__ == "__main__":
    main()
