from __future__ import annotations

from pydantic import BaseModel, ValidationError
from temps_api.auth import ADMIN, EXTERNAL_SERVICES_READ, Principal, hash_token, new_token
from temps_api.errors import validation_error


class _Body(BaseModel):
    memory_mb: int


def test_validation_errors_name_the_field() -> None:
    try:
        _Body.model_validate({"memory_mb": "lots"})
    except ValidationError as exc:
        error = validation_error(exc, prefix="parameters")
    assert error.status == 422
    assert error.message.startswith("parameters.memory_mb:")
    assert error.details[0]["field"] == "parameters.memory_mb"


def test_tokens_are_random_and_stored_as_hashes() -> None:
    token = new_token()
    assert token.startswith("temps_")
    assert token != new_token()
    assert hash_token(token) == hash_token(token)
    assert token not in hash_token(token)


def test_admin_implies_every_permission() -> None:
    from uuid import uuid4

    admin = Principal(uuid4(), "a", frozenset({ADMIN}))
    reader = Principal(uuid4(), "r", frozenset({EXTERNAL_SERVICES_READ}))
    assert admin.can("secrets:read")
    assert reader.can(EXTERNAL_SERVICES_READ)
    assert not reader.can("external_services:write")
