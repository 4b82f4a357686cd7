"""A signed-in user's access token, shaped as Supabase Auth issues it, through the official client.

The app's server code holds the anon key and the user's session: ``apikey: <anon>`` and
``Authorization: Bearer <access token>``. The devstack must accept such a token on REST, Storage
and Realtime, refuse it when expired or meant for another audience, refuse it as an API key, and
hand its claims to SQL so that ``auth.jwt()``, ``auth.uid()`` and ``auth.role()`` see them.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from postgrest import AsyncPostgrestClient
from postgrest.exceptions import APIError
from storage3.exceptions import StorageApiError

from realtime_worker.devstack import users
from realtime_worker.devstack.server import Devstack
from tests.devstack_fixtures import file_options, rows, signed_in

pytestmark = pytest.mark.integration

SUPABASE_CLAIMS = {"iss", "sub", "aud", "exp", "iat", "email", "phone", "role", "app_metadata",
                   "user_metadata", "aal", "amr", "session_id", "is_anonymous"}
WHOAMI = """
create function public.whoami() returns jsonb language sql stable as $$
  select jsonb_build_object('jwt', auth.jwt(), 'uid', auth.uid(), 'role', auth.role(),
                            'db_role', current_user)
$$;
grant execute on function public.whoami() to authenticated;
"""


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def resigned(devstack: Devstack, token: str, **changes: Any) -> str:
    """The same token with some claims changed (or removed with None), signed with the stack's key."""
    claims = {k: v for k, v in {**claims_of(token), **changes}.items() if v is not None}
    return jwt.encode(claims, devstack.keys.secret, algorithm="HS256")


def rest_as(devstack: Devstack, token: str) -> AsyncPostgrestClient:
    """The official PostgREST client as supabase-js sends a signed-in request."""
    return AsyncPostgrestClient(f"{devstack.url}/rest/v1", headers={
        "apikey": devstack.anon_key, "Authorization": f"Bearer {token}"})


async def test_the_token_has_the_claims_supabase_auth_issues(devstack: Devstack) -> None:
    user = uuid.uuid4()
    claims = claims_of(devstack.user_token(user))
    assert set(claims) == SUPABASE_CLAIMS
    assert (claims["aud"], claims["role"], claims["sub"]) == ("authenticated", "authenticated", str(user))
    assert claims["iss"] == f"{devstack.url}/auth/v1"
    assert claims["exp"] - claims["iat"] == 3600 and abs(claims["iat"] - time.time()) < 60
    assert claims["email"] == users.default_email(user) and claims["phone"] == ""
    assert claims["app_metadata"] == {"provider": "email", "providers": ["email"]}
    assert claims["user_metadata"]["email"] == claims["email"]
    assert claims["aal"] == "aal1" and claims["amr"][0]["method"] == "otp"
    assert uuid.UUID(claims["session_id"]) and claims["is_anonymous"] is False


async def test_sql_sees_the_claims_and_the_apps_policies_apply(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    await conn.execute(WHOAMI)
    alice, bob = await users.create(conn, 5), await users.create(conn, 7)
    token = devstack.user_token(alice, email="alice@example.test")
    async with signed_in(devstack, alice, access_token=token) as client:
        seen = (await client.rpc("whoami", {}).execute()).data
        credits = (await client.table("credits").select("user_id, balance").execute()).data
        ledger = (await client.table("credit_events").select("delta, reason").execute()).data
        bobs = (await client.table("credits").select("balance").eq("user_id", str(bob)).execute()).data
    assert isinstance(seen, dict)
    assert seen["jwt"] == claims_of(token)
    assert (seen["uid"], seen["role"], seen["db_role"]) == (str(alice), "authenticated", "authenticated")
    assert seen["jwt"]["app_metadata"]["provider"] == "email"
    assert rows(credits) == [{"user_id": str(alice), "balance": 5}]
    assert sum(r["delta"] for r in rows(ledger)) == 5 and bobs == []


async def test_a_signed_in_user_uses_storage_with_the_token(
        devstack: Devstack, conn: asyncpg.Connection) -> None:
    user = await users.create(conn)
    async with signed_in(devstack, user) as client:
        bucket = client.storage.from_("originals")
        await bucket.upload(f"{user}/photo.png", b"png", file_options("image/png"))
        assert await bucket.download(f"{user}/photo.png") == b"png"
    owner = await conn.fetchval("select owner from storage.objects where name = $1", f"{user}/photo.png")
    assert owner == user


OTHER_AUDIENCE = "jwt audience invalid. expected: authenticated"


@pytest.mark.parametrize(("changes", "message", "storage_message"), [
    ({"exp": int(time.time()) - 10}, "JWT expired", "jwt expired"),
    ({"aud": "somebody-else"}, "JWT not in audience", OTHER_AUDIENCE),
    ({"aud": None}, "JWT not in audience", OTHER_AUDIENCE),  # Supabase Auth always sets it
])
async def test_expired_and_foreign_tokens_are_refused(devstack: Devstack, conn: asyncpg.Connection,
                                                      changes: dict[str, Any], message: str,
                                                      storage_message: str) -> None:
    user = await users.create(conn)
    token = resigned(devstack, devstack.user_token(user), **changes)
    async with rest_as(devstack, token) as rest:
        with pytest.raises(APIError) as caught:
            await rest.from_("jobs").select("id").execute()
    assert (caught.value.code, caught.value.message) == ("PGRST303", message)
    async with signed_in(devstack, user, access_token=token) as client:
        with pytest.raises(StorageApiError) as storage:
            await client.storage.from_("originals").download(f"{user}/x.png")
    assert (storage.value.status, storage.value.message) == ("403", storage_message)


async def test_a_token_without_exp_is_refused(devstack: Devstack) -> None:
    token = resigned(devstack, devstack.user_token(uuid.uuid4()), exp=None)
    async with rest_as(devstack, token) as rest:
        with pytest.raises(APIError) as caught:
            await rest.from_("jobs").select("id").execute()
    assert caught.value.code == "PGRST301"


async def test_a_user_token_is_not_an_api_key(devstack: Devstack) -> None:
    token = devstack.user_token(uuid.uuid4())
    async with httpx.AsyncClient(base_url=devstack.url) as http:
        rest = await http.get("/rest/v1/jobs", headers={"apikey": token, "Authorization": f"Bearer {token}"})
        storage = await http.get("/storage/v1/object/originals/u/x.png", headers={"apikey": token})
    for response in (rest, storage):
        assert (response.status_code, response.json()["message"]) == (401, "Invalid API key")
