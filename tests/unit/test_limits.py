"""The input limits of tradeflow.domain.limits: ids, free text, cursors, timestamps, echoes."""

from __future__ import annotations

import pytest

from tradeflow.domain.errors import InvalidRequest
from tradeflow.domain.limits import (
    CURSOR_MAX,
    FOUND_MAX_CHARS,
    ID_MAX_LENGTH,
    TEXT_MAX_LENGTH,
    TIMESTAMP_MAX,
    check_cursor,
    check_id,
    check_text,
    check_timestamp,
    shown,
)


@pytest.mark.parametrize("value", ["a", "a" * ID_MAX_LENGTH, "bot-1_x:y~z@w+v=u", "0"])
def test_well_formed_ids_pass_unchanged(value: str) -> None:
    """An id of 1 to 128 plain-token characters is returned as it is."""
    assert check_id("bot_id", value) == value


@pytest.mark.parametrize(
    "value",
    ["", "a" * (ID_MAX_LENGTH + 1), "a.b", "a b", "a\x00", "\x1b[31m", "é", "a\n", 7, None],
)
def test_malformed_ids_are_refused_naming_the_field(value: object) -> None:
    """Empty, too long, dotted, spaced, control or non-ASCII ids (and non-strings) are refused."""
    with pytest.raises(InvalidRequest) as caught:
        check_id("bot_id", value)
    assert (caught.value.field, caught.value.found) == ("bot_id", value)


def test_optional_id_lets_none_through_but_not_empty() -> None:
    """optional=True accepts None (absent); the empty string is never an id."""
    assert check_id("bot_id", None, optional=True) is None
    with pytest.raises(InvalidRequest, match="or none"):
        check_id("bot_id", "", optional=True)


@pytest.mark.parametrize("value", ["", "halt: desk call", "é ünïcode ✓", "x" * TEXT_MAX_LENGTH])
def test_printable_text_within_bound_passes(value: str) -> None:
    """Printable text up to the bound (empty included) passes."""
    assert check_text("reason", value) == value


@pytest.mark.parametrize(
    "value",
    ["x" * (TEXT_MAX_LENGTH + 1), "a\x00b", "\x1b[2J", "two\nlines", "tab\t", "\x85", "\u202e", 3],
)
def test_control_characters_and_long_text_are_refused(value: object) -> None:
    """NUL, ANSI escapes, newlines, C1 controls, bidi overrides and overlong text are refused."""
    with pytest.raises(InvalidRequest) as caught:
        check_text("reason", value)
    assert caught.value.field == "reason"


def test_text_bound_is_the_callers() -> None:
    """max_length sets the bound (actors use a shorter one)."""
    assert check_text("actor", "a" * 5, max_length=5) == "a" * 5
    with pytest.raises(InvalidRequest, match="at most 5 characters"):
        check_text("actor", "a" * 6, max_length=5)


@pytest.mark.parametrize(
    ("value", "ok"),
    [(0, True), (CURSOR_MAX, True), (CURSOR_MAX + 1, False), (-1, False), (2**64 - 1, False)],
)
def test_cursor_fits_a_signed_64_bit_integer(value: int, ok: bool) -> None:
    """Cursors run from 0 to 2^63 - 1."""
    if ok:
        assert check_cursor("after", value) == value
    else:
        with pytest.raises(InvalidRequest, match="'after'"):
            check_cursor("after", value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (0.0, True),
        (TIMESTAMP_MAX, True),
        (TIMESTAMP_MAX + 1, False),
        (-1.0, False),
        (float("nan"), False),
        (float("inf"), False),
    ],
)
def test_timestamps_run_from_1970_to_year_9999(value: float, ok: bool) -> None:
    """Query timestamps are refused outside 1970-01-01 .. 9999-12-31T23:59:59Z (and NaN)."""
    if ok:
        assert check_timestamp("started_after", value) == value
    else:
        with pytest.raises(InvalidRequest, match="'started_after'"):
            check_timestamp("started_after", value)


def test_shown_keeps_a_short_value_as_its_repr() -> None:
    """A value whose repr fits is shown whole, control characters escaped by repr."""
    assert shown("a" * (FOUND_MAX_CHARS - 2)) == repr("a" * (FOUND_MAX_CHARS - 2))
    assert shown("\x1b[31m") == "'\\x1b[31m'"
    assert shown(2**64) == str(2**64)


@pytest.mark.parametrize(
    ("value", "tail"),
    [
        ("a" * 5_000_000, "(5000000 characters)"),
        (b"b" * 300, "(300 bytes)"),
        (list(range(100)), "characters)"),
    ],
)
def test_shown_cuts_a_long_value_and_says_how_long_it_was(value: object, tail: str) -> None:
    """A long value is cut to FOUND_MAX_CHARS plus an ellipsis and its length."""
    text = shown(value)
    assert len(text) < FOUND_MAX_CHARS + 30
    assert text.endswith(tail) and "..." in text


def test_invalid_request_message_and_details_quote_a_bounded_found() -> None:
    """InvalidRequest never carries a huge found value in its message or details."""
    error = InvalidRequest("bot_id", "an id", "x" * 100_000)
    assert len(error.message) < 400
    assert len(error.details()["found"]) < FOUND_MAX_CHARS + 30
    assert error.found == "x" * 100_000
