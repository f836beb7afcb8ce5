"""SCRAM-SHA-256 password verifiers (RFC 5802, RFC 7677), as PostgreSQL stores them.

A role's password is sent to the server as its verifier, never as plaintext: PostgreSQL stores a
string of this form as-is (`CREATE/ALTER ROLE … PASSWORD 'SCRAM-SHA-256$…'`), so the statement
text that `pg_stat_statements`, `pgss_query_texts.stat` or a server log may keep holds no
password — and the plaintext still logs in through SCRAM.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
SALT_BYTES = 16


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64) for `password`.

    Only printable ASCII passwords are accepted: SASLprep (which PostgreSQL applies before
    hashing) leaves them unchanged, so the verifier is exactly what the server would compute.
    The platform's passwords are alphanumeric (`crypto.generate_password`).
    """
    if not password or not all(" " < c <= "~" for c in password):
        raise ValueError("a SCRAM verifier is only computed for printable ASCII passwords")
    if iterations < 1:
        raise ValueError("iterations must be positive")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def verifies(verifier: str | None, password: str) -> bool:
    """Whether `verifier` (as stored in `pg_authid.rolpassword`) is `password`'s, under its own
    salt and iterations. Keeping a matching verifier matters: PgBouncer logs in to the server
    with the SCRAM keys it took from a client's login, which hold only while the salt stays."""
    try:
        method, rest = (verifier or "").split("$", 1)
        head, _keys = rest.split("$", 1)
        iterations, salt = head.split(":", 1)
        again = scram_sha256_verifier(
            password, salt=base64.b64decode(salt, validate=True), iterations=int(iterations)
        )
    except ValueError:  # not a SCRAM verifier (md5, none) or not a password we can hash
        return False
    return method == "SCRAM-SHA-256" and hmac.compare_digest(again, verifier or "")


def password_clause(password: str) -> str:
    """`PASSWORD '<verifier>'` for role DDL (which takes no bind parameters). The verifier is
    base64, `$` and `:` only: nothing to quote."""
    verifier = scram_sha256_verifier(password)
    assert "'" not in verifier
    return f"PASSWORD '{verifier}'"
