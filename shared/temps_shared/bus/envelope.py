"""Checks a consumer makes before a handler sees a message: its type is the one its subject
names, the role at the end of its subject may publish that type, and the service its subject
names is the one in its body. The server lets a role publish only its own subjects (see
`permissions.py`), so a message that passes came from a holder of that role's credentials."""

from __future__ import annotations

from pydantic import ValidationError

from temps_shared.messages import COMMAND_TYPES, EVENT_TYPES, Message, Role

MESSAGE_TYPES: dict[str, type[Message]] = {**EVENT_TYPES, **COMMAND_TYPES}


class ForgedMessage(Exception):
    """A message that breaks the contract: never handled, never retried."""


def open_envelope(subject: str, type_header: str, data: bytes) -> tuple[Message, Role]:
    """The decoded message and the role that published it, or ForgedMessage."""
    tokens = subject.split(".")
    cls = MESSAGE_TYPES.get(type_header)
    if cls is None:
        raise ForgedMessage(f"unknown message type {type_header!r}")
    try:
        origin = Role(tokens[-1])
    except ValueError:
        raise ForgedMessage(f"no publisher role at the end of {subject!r}") from None
    try:
        message = cls.model_validate_json(data)
    except ValidationError as exc:
        raise ForgedMessage(f"{type_header} does not decode: {exc.error_count()} errors") from None
    expected = message.subject(origin)
    if subject != expected:
        raise ForgedMessage(f"{type_header} on {subject!r} (expected {expected!r})")
    problem = message.origin_problem(origin)
    if problem is not None:
        raise ForgedMessage(problem)
    return message, origin
