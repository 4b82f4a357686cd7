"""The devstack: one 127.0.0.1 port speaking Supabase's REST, Storage and Realtime and Gemini's API.

Every request except the admin and Gemini ones must carry a key of this stack, as behind
Supabase's gateway: an ``apikey`` header (or ``?apikey=``) holding the anon or the service_role
key (the gateway knows only those two: a user's token there is an invalid API key), and
optionally ``Authorization: Bearer <jwt>`` (an API key, or a signed-in user's access token),
which then decides the role and claims the request runs with.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger

from realtime_worker import sql
from realtime_worker.devstack import postgres
from realtime_worker.devstack.admin import Admin
from realtime_worker.devstack.db import Database
from realtime_worker.devstack.faults import Faults
from realtime_worker.devstack.gemini import GeminiFake
from realtime_worker.devstack.keys import (
    API_KEY_ROLES,
    USER_TOKEN_SECONDS,
    ExpiredKey,
    InvalidKey,
    Keys,
    WrongAudience,
)
from realtime_worker.devstack.realtime import RealtimeServer
from realtime_worker.devstack.rest import CLAIMS, Rest
from realtime_worker.devstack.storage import MAX_UPLOAD_BYTES, Storage

HOST = "127.0.0.1"
_OPEN_PREFIXES = ("/admin/", "/v1beta/", "/v1/")  # admin checks its own key; Gemini checks x-goog-api-key
_SIGNED_DOWNLOAD = "/storage/v1/object/sign/"
_SIGNED_UPLOAD = "/storage/v1/object/upload/sign/"  # the PUT carries its own token
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AuthFailure(Exception):
    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _no_key() -> AuthFailure:
    hint = "No `apikey` request header or url param was found."
    body = {"message": "No API key found in request", "hint": hint}
    return AuthFailure(web.json_response(body, status=401))


def _bad_key() -> AuthFailure:
    hint = "Double check your Supabase `anon` or `service_role` API key."
    return AuthFailure(web.json_response({"message": "Invalid API key", "hint": hint}, status=401))


def _bad_bearer(path: str, problem: InvalidKey) -> AuthFailure:
    """Storage's and PostgREST's answers to a refused bearer token (expired, other audience,
    badly signed)."""
    claims_error = isinstance(problem, ExpiredKey | WrongAudience)
    if path.startswith("/storage/"):
        message = {ExpiredKey: "jwt expired", WrongAudience: "jwt audience invalid. expected: authenticated"}
        storage = {"statusCode": "403", "code": "AccessDenied", "error": "Unauthorized",
                   "message": message.get(type(problem), "invalid signature")}
        return AuthFailure(web.json_response(storage, status=400))
    rest: dict[str, str | None] = {
        "code": "PGRST303" if claims_error else "PGRST301", "details": None, "hint": None,
        "message": str(problem) if claims_error else "JWSError JWSInvalidSignature"}
    return AuthFailure(web.json_response(rest, status=401))


class KeyCheck:
    """Verifies keys, remembering the last few good ones so a hot path decodes each key once."""

    def __init__(self, keys: Keys, *, size: int = 256) -> None:
        self._keys = keys
        self._size = size
        self._good: dict[str, dict[str, Any]] = {}

    def verify(self, token: str) -> dict[str, Any]:
        claims = self._good.get(token)
        if claims is not None and claims.get("exp", float("inf")) > time.time():
            return claims
        claims = self._keys.verify(token)
        if len(self._good) >= self._size:
            self._good.pop(next(iter(self._good)))
        self._good[token] = claims
        return claims

    def claims(self, request: web.Request) -> dict[str, Any]:
        """The request's claims, or AuthFailure with Supabase's answer."""
        apikey = request.headers.get("apikey") or request.query.get("apikey")
        if not apikey:
            raise _no_key()
        try:
            claims = self.verify(apikey)
        except InvalidKey:
            raise _bad_key() from None
        if claims["role"] not in API_KEY_ROLES:
            raise _bad_key()
        header = request.headers.get("Authorization", "")
        bearer = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if bearer and bearer != apikey:
            try:
                claims = self.verify(bearer)
            except InvalidKey as exc:
                raise _bad_bearer(request.path, exc) from None
        return claims


def _needs_key(request: web.Request) -> bool:
    path = request.path
    if path.startswith(_OPEN_PREFIXES):
        return False
    return not ((request.method == "GET" and path.startswith(_SIGNED_DOWNLOAD))
                or (request.method == "PUT" and path.startswith(_SIGNED_UPLOAD)))


def gemini_key_for_folder(folder: Path) -> str:
    """A fake Gemini key per data folder, created on first use."""
    path = folder / "gemini_api_key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text("AIzaDevstack" + secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


async def ensure_schema(db: Database) -> bool:
    """Install the Supabase base, the app's schema and the migrations when any is missing."""
    async with db.admin() as conn:
        ready = await conn.fetchval(
            "select to_regclass('public.jobs') is not null"
            " and to_regclass('realtime_worker.schema_migrations') is not null")
        if ready:
            done = set(await conn.fetchval(
                "select coalesce(array_agg(version), '{}') from realtime_worker.schema_migrations"))
            ready = {m.version for m in sql.migrations()} <= done
        if not ready:
            logger.bind(event="devstack.schema.install").info("installing the schema")
            await postgres.install_schema(conn)  # type: ignore[arg-type]  # a pool proxy is a Connection
    return not ready


class Devstack:
    """The local stand-in for Supabase and Gemini, bound to 127.0.0.1."""

    def __init__(self, *, database_dsn: str, data_dir: Path, host: str = HOST, port: int = 0,
                 faults: Faults | None = None, gemini_history: int = 200) -> None:
        if host != HOST:
            raise ValueError(f"the devstack binds to {HOST} only, not {host!r}")
        self.database_dsn = database_dsn
        self.data_dir = data_dir
        self._port = port
        self.faults = faults if faults is not None else Faults()
        self.keys = Keys.for_folder(data_dir)
        self.anon_key = self.keys.anon
        self.service_key = self.keys.service_role
        self.gemini_api_key = gemini_key_for_folder(data_dir)
        self.db = Database(database_dsn)
        self.gemini = GeminiFake(self.faults, self.gemini_api_key, history=gemini_history)
        self.realtime = RealtimeServer(self.db, self.keys, self.faults)
        self.rest = Rest(self.db, self.faults)
        self.storage = Storage(self.db, self.keys.secret, self.faults, data_dir / "storage")
        self._check = KeyCheck(self.keys)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the devstack is not running")
        return self._url

    def user_token(self, user_id: uuid.UUID, *, email: str | None = None,
                   ttl: int = USER_TOKEN_SECONDS) -> str:
        """The access token Supabase Auth would give ``user_id`` after signing in on this stack."""
        return self.keys.user_token(user_id, issuer=f"{self.url}/auth/v1", email=email, ttl=ttl)

    def env(self) -> dict[str, str]:
        """What a worker (or the app) needs to talk to this stack."""
        return {
            "SUPABASE_URL": self.url,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_key,
            "SUPABASE_ANON_KEY": self.anon_key,
            "GEMINI_BASE_URL": self.url,
            "GEMINI_API_KEY": self.gemini_api_key,
            "DATABASE_URL": self.database_dsn,
        }

    async def start(self) -> None:
        await self.db.open()
        try:
            await ensure_schema(self.db)
            await self.realtime.start()
            self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, HOST, self._port).start()
        except BaseException:
            await self.stop()
            raise
        port = self._runner.addresses[0][1]
        self._url = f"http://{HOST}:{port}"
        logger.bind(event="devstack.started", port=port).info("devstack listening on {}", self._url)

    async def stop(self) -> None:
        await self.realtime.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.db.close()
        self._url = None

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate], client_max_size=MAX_UPLOAD_BYTES + 2**20)
        app.add_routes(Admin(self.keys, self.faults, self.realtime, self.gemini).routes())
        app.add_routes(self.rest.routes())
        app.add_routes(self.storage.routes())
        app.add_routes(self.realtime.routes())
        self.gemini.add_routes(app)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if _needs_key(request):
            try:
                request[CLAIMS] = self._check.claims(request)
            except AuthFailure as failure:
                return failure.response
        return await handler(request)


@asynccontextmanager
async def running(*, database_dsn: str, data_dir: Path, port: int = 0,
                  faults: Faults | None = None, gemini_history: int = 200) -> AsyncIterator[Devstack]:
    """A started devstack, stopped on the way out."""
    stack = Devstack(database_dsn=database_dsn, data_dir=data_dir, port=port, faults=faults,
                     gemini_history=gemini_history)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()
