"""Wire format: the message's JSON body; its type travels in the `Temps-Message-Type` header."""

from __future__ import annotations

from temps_shared.messages import Message

TYPE_HEADER = "Temps-Message-Type"
MSG_ID_HEADER = "Nats-Msg-Id"


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()
