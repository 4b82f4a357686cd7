"""HS256 API keys for the roles anon, authenticated and service_role, as Supabase issues them."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

ROLES = ("anon", "authenticated", "service_role")
_TEN_YEARS = 10 * 365 * 24 * 3600


class InvalidKey(Exception):
    """A key is missing, malformed, badly signed, expired or names an unknown role."""


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
        now = int(time.time())
        claims: dict[str, Any] = {"iss": "supabase-devstack", "role": role, "iat": now, "exp": now + ttl}
        if sub is not None:
            claims["sub"] = sub
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
            claims: dict[str, Any] = jwt.decode(token, self.secret, algorithms=["HS256"])
        except jwt.PyJWTError as exc:
            raise InvalidKey(str(exc)) from None
        if claims.get("role") not in ROLES:
            raise InvalidKey("unknown role")
        return claims
