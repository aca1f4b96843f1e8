"""Poison queue items become envelopes kombu can build a message from, never a crash."""

from __future__ import annotations

import base64
import json

import pytest
from kombu.transport.virtual import Message

from carbonedge.transport.queue_guard import (
    PROBLEM_HEADER,
    UNDECODABLE_CONTENT_TYPE,
    GuardedMessage,
    envelope_problem,
    tolerant_loads,
)


class _Channel:
    """What kombu's Message needs of a channel: the body codec."""

    def decode_body(self, body: str, encoding: str | None) -> bytes:
        return base64.b64decode(body) if encoding == "base64" else body.encode()


def _envelope(**changes: object) -> dict:
    env = {"body": base64.b64encode(b"\x93\x91\x80\x80\x80").decode(),
           "content-encoding": "binary", "content-type": "application/x-msgpack",
           "headers": {"task": "carbonedge.ping", "id": "req-1"},
           "properties": {"correlation_id": "req-1", "delivery_tag": "tag-1",
                          "body_encoding": "base64",
                          "delivery_info": {"exchange": "", "routing_key": "q"}}}
    env.update(changes)
    return env


POISON = [
    ([], "JSON list"),
    (123, "JSON int"),
    (None, "JSON NoneType"),
    ("a string", "JSON str"),
    (_envelope(headers="not a map"), "'headers' is str"),
    (_envelope(properties=[1]), "'properties' is not an object"),
    (_envelope(properties={"delivery_info": {"exchange": "", "routing_key": "q"}}),
     "delivery_tag"),
    (_envelope(properties={"delivery_tag": "t", "delivery_info": "x"}), "delivery_info"),
    (_envelope(properties={"delivery_tag": "t", "delivery_info": {}}), "routing_key"),
    (_envelope(body=12), "'body' is int"),
    (_envelope(body="abcde"), "not valid base64"),
    (_envelope(properties={"delivery_tag": "t", "body_encoding": "rot13",
                           "delivery_info": {"exchange": "", "routing_key": "q"}}),
     "not base64"),
    (_envelope(**{"content-type": ["x"]}), "'content-type' is not a string"),
]


@pytest.mark.parametrize(("payload", "problem"), POISON)
def test_malformed_envelopes_are_named(payload: object, problem: str) -> None:
    assert problem in (envelope_problem(payload) or "")


@pytest.mark.parametrize(("payload", "problem"), POISON)
def test_a_message_is_built_from_any_item(payload: object, problem: str) -> None:
    message = GuardedMessage(payload, channel=_Channel())
    assert message.content_type == UNDECODABLE_CONTENT_TYPE
    assert problem in message.headers[PROBLEM_HEADER]
    assert json.loads(message.body) == payload  # the original item, kept for the record


@pytest.mark.parametrize("payload", [[], 123, None, _envelope(headers="x"),
                                     _envelope(body="abcde")])
def test_kombu_alone_cannot_build_a_message_from_these(payload: object) -> None:
    with pytest.raises((TypeError, AttributeError, ValueError)):
        Message(payload, channel=_Channel())


def test_a_readable_request_id_survives_the_wrapping() -> None:
    message = GuardedMessage(_envelope(body=12), channel=_Channel())
    assert message.headers["id"] == "req-1"


def test_a_well_formed_envelope_is_untouched() -> None:
    assert envelope_problem(_envelope()) is None
    message = GuardedMessage(_envelope(), channel=_Channel())
    assert message.content_type == "application/x-msgpack"
    assert message.headers == {"task": "carbonedge.ping", "id": "req-1"}


@pytest.mark.parametrize("item", [b"{{{ not json", b"\xff\xfe", b"", "[" * 100_000])
def test_items_that_are_not_json_become_poison_envelopes(item: bytes | str) -> None:
    payload = tolerant_loads(item)
    assert envelope_problem(payload) is None
    assert payload["content-type"] == UNDECODABLE_CONTENT_TYPE
    raw = item.encode() if isinstance(item, str) else item
    assert base64.b64decode(payload["body"]) == raw
