"""Which configured secrets are too weak to run in production, and how to make good ones."""

from __future__ import annotations

from shared.settings import Settings

KNOWN_DEFAULTS = frozenset(
    {
        "your-jwt-secret",
        "secure_password",
        "change-me",
        "changeme",
        "password",
        "admin",
        "randomly_generated_secret_change_this",
        "secure_password_change_this",
    }
)
MIN_SECRET = 32
MIN_PASSWORD = 12


def weak_secrets(settings: Settings) -> list[str]:
    problems = []
    secret, password = settings.jwt_secret, settings.auth_password
    if secret in KNOWN_DEFAULTS or len(secret) < MIN_SECRET:
        problems.append(
            f"JWT_SECRET is a default or shorter than {MIN_SECRET} characters; "
            "generate one with: openssl rand -base64 48"
        )
    if password in KNOWN_DEFAULTS or len(password) < MIN_PASSWORD:
        problems.append(
            f"AUTH_PASSWORD is a default or shorter than {MIN_PASSWORD} characters;"
            " generate one with: openssl rand -base64 18"
        )
    return problems
