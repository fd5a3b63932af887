"""Password hashing and access tokens, from the standard library.

Passwords: PBKDF2-HMAC-SHA256 with a per-user salt, stored as
``pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>``. The demo uses 1,000 iterations so that
generating 100,000 users and logging a thousand simulated users in stays cheap; a real
deployment would use 600,000 (OWASP's figure for PBKDF2-SHA256) or scrypt/argon2, and the
stored format keeps the count so it can be raised without invalidating old hashes.

Tokens: ``<token id>.<secret>``; only the secret's SHA-256 is stored, so a leaked table holds
no usable token, and the lookup is by primary key (the secret is compared in constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["hash_password", "hash_secret", "new_secret", "parse_token", "verify_password"]

ITERATIONS = 1_000
_MAX_ID = 2**31 - 1


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The stored form of ``password`` (a fresh random salt unless one is given)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (False for a malformed stored value)."""
    try:
        scheme, iterations, salt, expected = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        digest = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), bytes.fromhex(salt), int(iterations)
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[int, str] | None:
    """``(token id, secret)`` from ``"<id>.<secret>"``, or None if it cannot be one."""
    head, dot, secret = token.partition(".")
    if (
        not dot
        or not (head.isascii() and head.isdigit())
        or len(head) > 10
        or not 20 <= len(secret) <= 100
    ):
        return None
    token_id = int(head)
    if not 1 <= token_id <= _MAX_ID:
        return None
    return token_id, secret
