"""Reading untrusted Redis values: parse or say once why not."""

from __future__ import annotations

import logging

import pytest

from carbonedge.protocol import keys
from carbonedge.protocol.untrusted import (
    Rejections,
    decode_fields,
    parse_amount,
    parse_count,
    parse_number,
    text,
)


def test_text_is_strict_utf8() -> None:
    assert text(b"node-a") == "node-a" and text("x") == "x"
    assert text(b"\xff\xfe") is None
    assert text(12) is None


def test_decode_fields_refuses_a_hash_with_any_non_utf8_byte() -> None:
    assert decode_fields({b"a": b"1", b"b": b"2"}) == {"a": "1", "b": "2"}
    assert decode_fields({b"a": b"1", b"b": b"\xc3"}) is None
    assert decode_fields({b"\xc3": b"1"}) is None


@pytest.mark.parametrize(("raw", "expected"), [
    (b"12", 12), (b"-3", -3), (7, 7), (b" 4 ", 4), (b"1.5", None), (b"1e3", None),
    (b"nan", None), (b"", None), (b"\xff", None), (b"9" * 40, None), (b"\xd9\xa3", None),
    (True, None), (None, None),
])
def test_parse_count(raw: object, expected: int | None) -> None:
    assert parse_count(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (b"1.5", 1.5), (b"0", 0.0), (2, 2.0), (b"-1", None), (b"inf", None), (b"nan", None),
    (b"abc", None), (b"\xff", None), (b"1e400", None), (None, None),
])
def test_parse_amount(raw: object, expected: float | None) -> None:
    assert parse_amount(raw) == expected


def test_parse_number_allows_negatives_but_not_infinity() -> None:
    assert parse_number(b"-2.5") == -2.5 and parse_number(b"inf") is None


class _Pipe:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def hincrby(self, *args: object) -> None:
        self.calls.append(args)


def test_rejections_log_and_count_once_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections("dispatcher d1", logging.getLogger("test"))
    with caplog.at_level(logging.ERROR, logger="test"):
        for _ in range(50):  # the same broken heartbeat, read again and again
            rejections.reject("heartbeat", "node-a", "cpu_quota is not a number")
        rejections.reject("heartbeat", b"\xffnode", "not UTF-8")
    assert len(caplog.records) == 2
    assert "\\xff" in caplog.records[1].getMessage()  # escaped, never raw bytes in a log
    assert "node-a" in {what for _, what, _ in rejections.active("heartbeat")}
    pipe = _Pipe()
    rejections.flush_to(pipe)
    assert pipe.calls == [(keys.REJECTED, "dispatcher d1|heartbeat", 2)]
    rejections.flush_to(pipe)
    assert len(pipe.calls) == 1  # flushed counts are not sent twice


def test_a_cause_logged_again_after_it_was_good_or_changed(
        caplog: pytest.LogCaptureFixture) -> None:
    rejections = Rejections("p", logging.getLogger("test"))
    with caplog.at_level(logging.INFO, logger="test"):
        rejections.reject("heartbeat", "node-a", "bad")
        rejections.accept("heartbeat", "node-a")
        rejections.reject("heartbeat", "node-a", "bad")
        rejections.reject("heartbeat", "node-a", "worse")
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.INFO,
                                                   logging.ERROR, logging.ERROR]
    assert rejections.total["heartbeat"] == 3


def test_a_flood_of_distinct_garbage_does_not_grow_memory() -> None:
    rejections = Rejections("p", logging.getLogger("test.quiet"))
    logging.getLogger("test.quiet").disabled = True
    for i in range(12_000):
        rejections.reject("node-registry", f"junk-{i}", "not a node id")
    assert len(rejections.active()) <= 10_000
