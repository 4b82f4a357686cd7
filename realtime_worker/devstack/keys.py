"""HS256 keys as a Supabase project issues them: API keys for anon and service_role, and the
access token Supabase Auth gives a signed-in user (role ``authenticated``).

A user's token carries the claims a real project puts in it (``aud``, ``iss`` = ``<url>/auth/v1``,
``sub``, ``email``, ``phone``, ``app_metadata``, ``user_metadata``, ``aal``, ``amr``,
``session_id``, ``is_anonymous``), so that ``auth.jwt()`` sees in SQL what it sees in production.
Every key must carry ``exp`` and be unexpired; an ``aud``, when present, must be
``authenticated``, and a signed-in user's token must have it (Supabase Auth always sets it).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from realtime_worker.devstack import users

ROLES = ("anon", "authenticated", "service_role")
API_KEY_ROLES = ("anon", "service_role")
AUDIENCE = "authenticated"
USER_TOKEN_SECONDS = 3600  # Supabase Auth's default JWT expiry
_TEN_YEARS = 10 * 365 * 24 * 3600


class InvalidKey(Exception):
    """A key is missing, malformed, badly signed, expired or names an unknown role."""


class ExpiredKey(InvalidKey):
    """A key whose ``exp`` has passed."""


class WrongAudience(InvalidKey):
    """A key for another audience (or a user's token without one)."""


def user_claims(user_id: str, *, issuer: str, email: str, now: int, ttl: int) -> dict[str, Any]:
    """The claims of an access token Supabase Auth issues after a magic-link sign-in (the app's
    only way in: apps/web/app/api/auth/magic-link/route.ts)."""
    return {
        "iss": issuer, "sub": user_id, "aud": AUDIENCE, "exp": now + ttl, "iat": now,
        "email": email, "phone": "", "role": "authenticated",
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {"email": email, "email_verified": True, "phone_verified": False,
                          "sub": user_id},
        "aal": "aal1", "amr": [{"method": "otp", "timestamp": now}],
        "session_id": str(uuid.uuid4()), "is_anonymous": False,
    }


@dataclass(frozen=True)
class Keys:
    secret: str

    @classmethod
    def for_folder(cls, folder: Path) -> Keys:
        """The folder's secret, created on first use so keys survive restarts."""
        path = folder / "jwt_secret"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return cls(path.read_text().strip())

    def make(self, role: str, *, sub: str | None = None, ttl: int = _TEN_YEARS) -> str:
        """An API key (``anon``, ``service_role``) as Supabase's legacy keys are made. A signed-in
        user's token comes from :meth:`user_token`: one made here for ``authenticated`` has no
        ``aud`` and is refused, as a real project would never issue it."""
        now = int(time.time())
        claims: dict[str, Any] = {"iss": "supabase-devstack", "role": role, "iat": now, "exp": now + ttl}
        if sub is not None:
            claims["sub"] = sub
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def user_token(self, user_id: uuid.UUID, *, issuer: str, email: str | None = None,
                   ttl: int = USER_TOKEN_SECONDS) -> str:
        """A signed-in user's access token, shaped as Supabase Auth issues it (``issuer`` is the
        project's ``<url>/auth/v1``; the e-mail defaults to the one sign-up gives)."""
        claims = user_claims(str(user_id), issuer=issuer, email=email or users.default_email(user_id),
                             now=int(time.time()), ttl=ttl)
        return jwt.encode(claims, self.secret, algorithm="HS256")

    @property
    def anon(self) -> str:
        return self.make("anon")

    @property
    def service_role(self) -> str:
        return self.make("service_role")

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims; InvalidKey when it is not a valid key for this stack."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self.secret, algorithms=["HS256"],
                options={"require": ["exp"], "verify_aud": False})
        except jwt.ExpiredSignatureError:
            raise ExpiredKey("JWT expired") from None
        except jwt.PyJWTError as exc:
            raise InvalidKey(str(exc)) from None
        if claims.get("role") not in ROLES:
            raise InvalidKey("unknown role")
        _check_audience(claims)
        return claims


def _check_audience(claims: dict[str, Any]) -> None:
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if audience is None and claims["role"] != "authenticated":
        return
    if AUDIENCE not in audiences:
        raise WrongAudience("JWT not in audience")
