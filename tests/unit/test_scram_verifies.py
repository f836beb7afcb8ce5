"""`scram.verifies`: a stored verifier is recognised as a password's under its own salt, so a
reconcile keeps it (PgBouncer's SCRAM keys from a client's login hold only while it stays)."""

from __future__ import annotations

import pytest
from temps_shared.engines.scram import scram_sha256_verifier, verifies


def test_a_verifier_verifies_its_password_only() -> None:
    verifier = scram_sha256_verifier("Passw0rdXYZ")
    assert verifies(verifier, "Passw0rdXYZ")
    assert not verifies(verifier, "Passw0rdXYz")
    # Another salt, same password: still that password's verifier.
    assert verifies(scram_sha256_verifier("Passw0rdXYZ", iterations=10), "Passw0rdXYZ")


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        "md5" + "0" * 32,
        "SCRAM-SHA-256$4096:not base64!$a:b",
        "SCRAM-SHA-256$many:c2FsdA==$a:b",
        "SCRAM-SHA-256$4096:c2FsdA==",
    ],
)
def test_anything_else_does_not(stored: str | None) -> None:
    assert not verifies(stored, "Passw0rdXYZ")


def test_a_tampered_key_does_not() -> None:
    verifier = scram_sha256_verifier("Passw0rdXYZ")
    head, keys = verifier.rsplit("$", 1)
    stored_key, server_key = keys.split(":")
    assert not verifies(f"{head}${server_key}:{stored_key}", "Passw0rdXYZ")
