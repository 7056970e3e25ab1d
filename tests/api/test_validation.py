"""The original's validation messages, word for word (original-behavior.md sections 1.4, 5)."""

import pytest

from services.api.validation import joined, login_errors, username_errors


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"username": "a!"},
            "Username must contain only alphanumeric characters, "
            "Username must be at least 3 characters long",
        ),
        ({"username": "ab"}, "Username must be at least 3 characters long"),
        ({"username": "a" * 51}, "Username must not exceed 50 characters"),
        ({"username": "a_b-c"}, "Username must contain only alphanumeric characters"),
        ({"username": "héllo"}, "Username must contain only alphanumeric characters"),
        ({}, "Username is required"),
        ({"username": ""}, '"username" is not allowed to be empty'),
        ({"username": 5}, '"username" must be a string'),
        ({"username": None}, '"username" must be a string'),
        ({"username": "Alice42"}, ""),
    ],
)
def test_username_messages(fields, message):
    assert joined(username_errors(fields)) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, '"username" is required, Password is required'),
        (
            {"username": "", "password": "short"},
            '"username" is not allowed to be empty, Password must be at least 8 characters long',
        ),
        (
            {"username": "a" * 129, "password": "p" * 129},
            '"username" length must be less than or equal to 128 characters long, '
            "Password must not exceed 128 characters",
        ),
        ({"username": "admin", "password": 12345678}, '"password" must be a string'),
        ({"username": "admin", "password": "longenough"}, ""),
    ],
)
def test_login_messages(fields, message):
    assert joined(login_errors(fields)) == message
