"""Per-project provider credentials: sealed at rest, never answered, cached like keys.

The store, the cache and the crypto run against the real PostgreSQL; the HTTP tests
(`*_api_*`, `*_proxy_*`) go through the gateway's own admin routes and proxy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
import structlog
from aiohttp.test_utils import TestClient
from conftest import FakeUpstream, SettingsFactory, admin_headers, chat_body, create_project

from gateway import credentials, projects
from gateway.app import build_app
from gateway.credentials import (
    CredentialsUnavailable,
    ProjectCredentials,
    SecretBox,
    UnsealError,
    row_aad,
)
from gateway.db import init_connection
from gateway.errors import NotFound
from gateway.settings import SettingsError

SECRET = "correct horse battery staple, 32+ characters long"
OTHER_SECRET = "another secret of at least thirty-two characters"
API_KEY = "sk-proj-" + "Q7vX2mZ9" * 4 + "a1b2"
UNREACHABLE_DSN = "postgresql://postgres@127.0.0.1:1/nowhere"


# -- SecretBox ---------------------------------------------------------------------------------

def test_seal_then_open_round_trips_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(SECRET)
    aad = row_aad(1, "openai", "default")
    nonce1, sealed1 = box.seal(API_KEY, aad)
    nonce2, sealed2 = box.seal(API_KEY, aad)
    assert len(nonce1) == 12 and nonce1 != nonce2 and sealed1 != sealed2
    assert len(sealed1) == len(API_KEY) + 16  # the GCM tag
    assert API_KEY.encode() not in sealed1 and API_KEY[-8:].encode() not in sealed1
    assert box.open(nonce1, sealed1, aad) == API_KEY
    assert box.open(nonce2, sealed2, aad) == API_KEY


def test_altered_ciphertext_other_row_or_other_key_does_not_open() -> None:
    box = SecretBox(SECRET)
    aad = row_aad(1, "openai", "default")
    nonce, sealed = box.seal(API_KEY, aad)
    flipped = bytes([sealed[0] ^ 1]) + sealed[1:]
    with pytest.raises(UnsealError):
        box.open(nonce, flipped, aad)
    with pytest.raises(UnsealError):
        box.open(bytes([nonce[0] ^ 1]) + nonce[1:], sealed, aad)
    for other_row in (row_aad(2, "openai", "default"), row_aad(1, "mistral", "default"),
                      row_aad(1, "openai", "backup")):
        with pytest.raises(UnsealError):
            box.open(nonce, sealed, other_row)
    with pytest.raises(UnsealError):
        SecretBox(OTHER_SECRET).open(nonce, sealed, aad)


def test_the_secret_key_setting_is_checked_and_fingerprinted_without_showing_it() -> None:
    assert SecretBox.from_setting("") is None
    assert SecretBox.from_setting("   ") is None
    with pytest.raises(SettingsError, match=r"GATEWAY_SECRET_KEY.*at least 32 characters"):
        SecretBox.from_setting("x" * 31)
    box = SecretBox.from_setting(SECRET)
    assert box is not None
    assert len(box.key_id) == 16 and int(box.key_id, 16) >= 0
    assert SecretBox(f"  {SECRET}\n").key_id == box.key_id  # surrounding whitespace ignored
    assert SecretBox(OTHER_SECRET).key_id != box.key_id
    assert SECRET not in repr(box) and box.key_id in repr(box)


def test_key_hint_shows_at_most_the_last_four_characters() -> None:
    assert credentials.key_hint(API_KEY) == "\u2026a1b2"
    assert credentials.key_hint("short-key") == "\u2026"


# -- store ----------------------------------------------------------------------------------

@pytest.fixture
async def pool(db: asyncpg.Connection, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await db.execute("TRUNCATE provider_credentials RESTART IDENTITY")
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4,
                                        init=init_connection)
    assert created is not None
    yield created
    await created.close()


async def _project(db: asyncpg.Connection) -> int:
    row = await projects.create_project(db, {"name": f"creds-{uuid.uuid4().hex[:8]}"})
    project_id: int = row["id"]
    return project_id


async def _put(db: asyncpg.Connection, project_id: int, provider: str = "openai",
               name: str = "default", api_key: str = API_KEY, *, secret: str = SECRET,
               base_url: str | None = None, weight: int = 1,
               options: dict[str, str] | None = None) -> dict[str, Any]:
    return await credentials.put_credential(db, SecretBox(secret), project_id, provider, name,
                                            api_key, base_url, weight, options or {})


def _assert_no_key_material(text: str | bytes, api_key: str = API_KEY) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert api_key.encode() not in data
    for i in range(len(api_key) - 8):  # no run of 8 characters of the key, anywhere
        assert api_key[i:i + 8].encode() not in data, api_key[i:i + 8]


async def test_the_stored_row_holds_no_key_material(db: asyncpg.Connection,
                                                    pool: asyncpg.Pool) -> None:
    project_id = await _project(db)
    view = await _put(db, project_id, options={"api_version": "2024-10-21"})
    assert set(view) == {"id", "project_id", "provider", "name", "key_hint", "base_url",
                         "weight", "options", "encryption_key_id", "created_at", "updated_at"}
    assert view["key_hint"] == "\u2026a1b2"
    assert view["encryption_key_id"] == SecretBox(SECRET).key_id
    assert view["options"] == {"api_version": "2024-10-21"}
    row = await db.fetchrow("SELECT * FROM provider_credentials")
    assert row is not None
    for value in row.values():
        _assert_no_key_material(value if isinstance(value, bytes) else str(value))
    _assert_no_key_material(orjson.dumps(await credentials.list_credentials(db, project_id)))


async def test_put_replaces_in_place_and_delete_removes(db: asyncpg.Connection,
                                                        pool: asyncpg.Pool) -> None:
    project_id = await _project(db)
    first = await _put(db, project_id)
    second = await _put(db, project_id, api_key="sk-new-key-000000zzzz", weight=3,
                        base_url="https://eu.example.com/v1")
    assert second["id"] == first["id"]
    assert (second["weight"], second["key_hint"], second["base_url"]) == (
        3, "\u2026zzzz", "https://eu.example.com/v1")
    assert second["updated_at"] > first["updated_at"]
    assert [v["id"] for v in await credentials.list_credentials(db, project_id)] == [first["id"]]
    assert await credentials.delete_credential(db, project_id, "openai", "default")
    assert not await credentials.delete_credential(db, project_id, "openai", "default")
    assert await credentials.list_credentials(db, project_id) == []


async def test_an_unknown_project_is_not_found(db: asyncpg.Connection,
                                               pool: asyncpg.Pool) -> None:
    with pytest.raises(NotFound, match="project 999999"):
        await _put(db, 999_999)
    with pytest.raises(NotFound, match="project 999999"):
        await credentials.list_credentials(db, 999_999)


# -- cache ----------------------------------------------------------------------------------

StoreFactory = Callable[..., Awaitable[ProjectCredentials]]


@pytest.fixture
async def make_store(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[StoreFactory]:
    started: list[ProjectCredentials] = []

    async def make(secret: str = SECRET, *, ttl_s: float = 300.0, dsn: str = database_url,
                   on: Any = None) -> ProjectCredentials:
        store = ProjectCredentials(SecretBox.from_setting(secret), ttl_s=ttl_s,
                                   connect_timeout_s=0.5)
        await store.start(on if on is not None else pool, dsn)
        started.append(store)
        return store

    yield make
    for store in started:
        await store.close()


async def _listening(*stores: ProjectCredentials) -> None:
    for _ in range(200):
        if all(s.listening for s in stores):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the credentials listener did not connect")


async def _seconds_until(check: Callable[[], Awaitable[bool]], within: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within:
        if await check():
            return loop.time() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"not seen within {within}s")


async def _keys(store: ProjectCredentials, project_id: int, provider: str = "openai") -> list[str]:
    return [c.api_key for c in await store.get(project_id, provider)]


async def test_get_answers_decrypted_credentials_and_hides_them_from_repr(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id, "openai", "b-backup", "sk-backup-key-0000wxyz", weight=0)
    await _put(db, project_id, "openai", "a-main", API_KEY, weight=5,
               base_url="https://eu.example.com/v1", options={"org": "acme"})
    store = await make_store()
    main, backup = await store.get(project_id, "openai")
    assert (main.name, main.api_key, main.base_url, main.weight, dict(main.options)) == (
        "a-main", API_KEY, "https://eu.example.com/v1", 5, {"org": "acme"})
    assert (backup.name, backup.api_key, backup.base_url, backup.weight) == (
        "b-backup", "sk-backup-key-0000wxyz", "", 0)  # "": the provider's own base URL
    assert API_KEY not in repr(main) and API_KEY not in repr(store.get)
    assert await store.get(project_id, "anthropic") == ()
    assert await store.get(project_id + 1000, "openai") == ()


class CountingPool:
    """The pool's `acquire`, counted: proves the hot path does not query per request."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.fetches = pool, 0

    async def acquire(self) -> Any:
        self.fetches += 1
        await asyncio.sleep(0.05)  # keep the query in flight while the others arrive
        return await self.pool.acquire()

    async def release(self, conn: Any) -> None:
        await self.pool.release(conn)


async def test_one_query_per_project_however_many_requests(
        db: asyncpg.Connection, pool: asyncpg.Pool, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id)
    counting = CountingPool(pool)
    store = await make_store(on=counting)
    await _listening(store)
    answers = await asyncio.gather(*(_keys(store, project_id) for _ in range(50)))
    assert answers == [[API_KEY]] * 50
    assert counting.fetches == 1
    for _ in range(50):
        await store.get(project_id, "openai")
        await store.get(project_id, "mistral")
    assert counting.fetches == 1


class FlakyPool(CountingPool):
    """A pool whose database goes away on demand."""

    down = False

    async def acquire(self) -> Any:
        if self.down:
            raise ConnectionRefusedError("database is down")
        return await super().acquire()


async def test_while_the_database_is_down_the_last_answer_keeps_serving(
        db: asyncpg.Connection, pool: asyncpg.Pool, make_store: StoreFactory) -> None:
    project_id, unseen = await _project(db), await _project(db)
    await _put(db, project_id)
    flaky = FlakyPool(pool)
    store = await make_store(on=flaky)
    await _listening(store)
    assert await _keys(store, project_id) == [API_KEY]
    store.invalidate("*")  # as when the listener is lost: every entry must be read again
    flaky.down = True
    assert await _keys(store, project_id) == [API_KEY]
    assert await _keys(store, project_id) == [API_KEY]  # kept a second: no query per request
    assert flaky.fetches == 1
    error = await _unavailable(store, unseen)  # never read: no guessing
    assert f"project {unseen}'s provider credentials cannot be read" in error.message
    flaky.down = False
    await _put(db, project_id, api_key="sk-rotated-after-the-outage-0000")

    async def rotated() -> bool:
        return await _keys(store, project_id) == ["sk-rotated-after-the-outage-0000"]

    assert await _seconds_until(rotated, within=1.2) <= 1.2


async def test_a_change_on_one_replica_reaches_another_within_a_second(
        db: asyncpg.Connection, pool: asyncpg.Pool, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    a, b = await make_store(), await make_store()  # cached for 300 s: only NOTIFY can help
    await _listening(a, b)
    assert await b.get(project_id, "openai") == ()
    async with pool.acquire() as conn:
        assert a.box is not None
        await credentials.put_credential(conn, a.box, project_id, "openai", "default",
                                         API_KEY, None, 1, {})

    async def b_has_it() -> bool:
        return await _keys(b, project_id) == [API_KEY]

    assert await _seconds_until(b_has_it, within=1.0) < 1.0
    await db.execute("UPDATE provider_credentials SET weight = 7")

    async def b_has_weight_7() -> bool:
        return [c.weight for c in await b.get(project_id, "openai")] == [7]

    assert await _seconds_until(b_has_weight_7, within=1.0) < 1.0


async def test_a_killed_listener_still_serves_fresh_credentials_within_a_second(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id)
    store = await make_store()
    await _listening(store)
    assert await _keys(store, project_id) == [API_KEY]
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        credentials.LISTENER_NAME)
    assert killed == 1
    await _put(db, project_id, api_key="sk-rotated-after-the-kill-9999")

    async def rotated() -> bool:
        return await _keys(store, project_id) == ["sk-rotated-after-the-kill-9999"]

    assert await _seconds_until(rotated, within=1.2) <= 1.2
    await _listening(store)  # and the listener comes back by itself


async def test_without_a_listener_entries_live_one_second(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id)
    store = await make_store(dsn=UNREACHABLE_DSN, ttl_s=300.0)  # LISTEN never connects
    assert await _keys(store, project_id) == [API_KEY]
    await _put(db, project_id, api_key="sk-rotated-while-deaf-0000")
    assert await _keys(store, project_id) == [API_KEY]  # cached, no query per request

    async def rotated() -> bool:
        return await _keys(store, project_id) == ["sk-rotated-while-deaf-0000"]

    assert 0.5 < await _seconds_until(rotated, within=1.5) <= 1.1
    assert not store.listening


async def test_a_deleted_project_takes_its_credentials_along(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id)
    await _put(db, project_id, "mistral")
    store = await make_store()
    await _listening(store)
    assert await _keys(store, project_id) == [API_KEY]
    await db.execute("DELETE FROM projects WHERE id = $1", project_id)
    assert await db.fetchval("SELECT count(*) FROM provider_credentials") == 0

    async def gone() -> bool:
        return await store.get(project_id, "openai") == ()

    assert await _seconds_until(gone, within=1.0) < 1.0


async def test_truncate_clears_every_cache(db: asyncpg.Connection,
                                           make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id)
    store = await make_store()
    await _listening(store)
    assert await _keys(store, project_id) == [API_KEY]
    await db.execute("TRUNCATE provider_credentials")

    async def gone() -> bool:
        return await store.get(project_id, "openai") == ()

    assert await _seconds_until(gone, within=1.0) < 1.0


async def _unavailable(store: ProjectCredentials, project_id: int,
                       provider: str = "openai") -> CredentialsUnavailable:
    with pytest.raises(CredentialsUnavailable) as caught:
        await store.get(project_id, provider)
    assert caught.value.status == 503 and caught.value.code == "credentials_unavailable"
    return caught.value


async def test_a_stored_credential_that_cannot_be_opened_never_falls_back(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id, "openai")
    await _put(db, project_id, "mistral")
    with structlog.testing.capture_logs() as logs:
        unset = await make_store(secret="")
        error = await _unavailable(unset, project_id)
        assert "GATEWAY_SECRET_KEY is not set" in error.message
        assert error.details == {"provider": "openai"}

        other = await make_store(OTHER_SECRET)
        error = await _unavailable(other, project_id)
        assert SecretBox(SECRET).key_id in error.message
        assert SecretBox(OTHER_SECRET).key_id in error.message
        assert await other.get(project_id, "anthropic") == ()  # nothing stored: not an error

        await db.execute("UPDATE provider_credentials SET ciphertext = "
                         "set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) "
                         "WHERE provider = 'openai'")
        altered = await make_store()
        assert "altered" in (await _unavailable(altered, project_id)).message
        assert await _keys(altered, project_id, "mistral") == [API_KEY]  # others still work

        moved = await _project(db)  # a ciphertext moved to another project does not open
        await db.execute("UPDATE provider_credentials SET project_id = $1 "
                         "WHERE provider = 'mistral'", moved)
        assert "altered" in (await _unavailable(await make_store(), moved, "mistral")).message
    assert any(e["event"] == "provider_credentials_unusable" for e in logs)
    _assert_no_key_material(repr(logs))


async def test_a_provider_whose_credentials_all_weigh_zero_is_unavailable(
        db: asyncpg.Connection, make_store: StoreFactory) -> None:
    project_id = await _project(db)
    await _put(db, project_id, weight=0)
    store = await make_store()
    assert "weight 0" in (await _unavailable(store, project_id)).message


# -- HTTP (needs the routes and app[CREDENTIALS]) -------------------------------------------

GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_gateway(aiohttp_client: Any, make_settings: SettingsFactory,
                       db: asyncpg.Connection, database_url: str) -> GatewayFactory:
    await db.execute("TRUNCATE provider_credentials RESTART IDENTITY")

    async def make(secret: str = SECRET, **sections: dict[str, Any]) -> TestClient:
        app = build_app(make_settings(secrets={"key": secret}, **sections))
        client: TestClient = await aiohttp_client(app)
        return client

    return make


def _url(project_id: int, provider: str | None = None) -> str:
    url = f"/api/admin/projects/{project_id}/providers"
    return url if provider is None else f"{url}/{provider}"


async def test_the_api_stores_lists_replaces_and_deletes_without_answering_the_key(
        make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    project, _ = await create_project(gateway)
    admin = admin_headers()
    with structlog.testing.capture_logs() as logs:
        resp = await gateway.put(_url(project["id"], "openai"), headers=admin, json={
            "api_key": API_KEY, "base_url": "https://eu.example.com/v1/", "weight": 2,
            "options": {"organization": "org-acme"}})
        text = await resp.text()
        assert resp.status == 200, text
        _assert_no_key_material(text)
        view = orjson.loads(text)
        assert (view["provider"], view["name"], view["base_url"], view["weight"],
                view["options"], view["key_hint"]) == (
            "openai", "default", "https://eu.example.com/v1", 2, {"organization": "org-acme"},
            "\u2026a1b2")
        resp = await gateway.put(_url(project["id"], "openai"), headers=admin,
                                 json={"api_key": "sk-second-key-0000wxyz", "name": "backup"})
        assert resp.status == 200
        resp = await gateway.get(_url(project["id"]), headers=admin)
        text = await resp.text()
        assert resp.status == 200
        _assert_no_key_material(text)
        _assert_no_key_material(text, "sk-second-key-0000wxyz")
        listed = orjson.loads(text)["data"]
        assert [(v["name"], v["weight"], v["base_url"]) for v in listed] == [
            ("backup", 1, None), ("default", 2, "https://eu.example.com/v1")]
        resp = await gateway.delete(_url(project["id"], "openai") + "?name=backup",
                                    headers=admin)
        assert resp.status == 204
        resp = await gateway.delete(_url(project["id"], "openai") + "?name=backup",
                                    headers=admin)
        assert resp.status == 404
        assert "no openai credential named 'backup'" in (await resp.json())["error"]
        resp = await gateway.get(_url(project["id"]), headers=admin)
        assert [v["name"] for v in (await resp.json())["data"]] == ["default"]
    _assert_no_key_material(repr(logs))


async def test_the_api_names_every_problem_of_a_bad_body_without_echoing_the_key(
        make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    project, _ = await create_project(gateway)
    resp = await gateway.put(_url(project["id"], "nosuchprovider"), headers=admin_headers(),
                             json={"api_key": "sk-has a space-SECRETVALUE", "name": "a:b",
                                   "base_url": "ftp://example.com", "weight": -1,
                                   "options": {"x": 1}, "extra": True})
    body = await resp.json()
    assert resp.status == 400, body
    assert [p["field"] for p in body["details"]["errors"]] == [
        "provider", "extra", "api_key", "name", "base_url", "weight", "options"]
    assert "SECRETVALUE" not in await resp.text()
    resp = await gateway.put(_url(project["id"], "openai"), headers=admin_headers(), json={})
    body = await resp.json()
    assert resp.status == 400 and "api_key: is required" in body["error"]
    resp = await gateway.put(_url(project["id"], "openai"), headers=admin_headers(),
                             json=[API_KEY])
    assert resp.status == 400


async def test_the_api_refuses_to_store_without_a_secret_key(
        make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(secret="")
    project, _ = await create_project(gateway)
    resp = await gateway.put(_url(project["id"], "openai"), headers=admin_headers(),
                             json={"api_key": API_KEY})
    body = await resp.json()
    assert resp.status == 400 and body["code"] == "secret_key_missing"
    assert "GATEWAY_SECRET_KEY" in body["error"]


async def test_the_api_answers_404_for_an_unknown_project_and_401_without_the_token(
        make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    admin = admin_headers()
    for method, url in (("PUT", _url(424242, "openai")), ("GET", _url(424242)),
                        ("DELETE", _url(424242, "openai"))):
        resp = await gateway.request(method, url, headers=admin, json={"api_key": API_KEY})
        assert resp.status == 404, (method, await resp.text())
        assert "project 424242 does not exist" in (await resp.json())["error"]
        resp = await gateway.request(method, url, json={"api_key": API_KEY})
        assert resp.status == 401


# -- proxy (needs the pipeline to ask app[CREDENTIALS]) -------------------------------------

async def test_the_proxy_uses_the_projects_own_key_and_never_the_gateways_instead(
        make_gateway: GatewayFactory, fake_upstream: FakeUpstream,
        db: asyncpg.Connection) -> None:
    gateway = await make_gateway(providers={"openai": {"api_key": "sk-gateway-own-key"}})
    project, key = await create_project(gateway)
    _, other_key = await create_project(gateway)
    resp = await gateway.put(_url(project["id"], "openai"), headers=admin_headers(),
                             json={"api_key": API_KEY})
    assert resp.status == 200
    auth = {"Authorization": f"Bearer {key}"}
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth)
    assert resp.status == 200, await resp.text()
    assert fake_upstream.state.log[-1]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    resp = await gateway.post("/v1/chat/completions", json=chat_body(),
                              headers={"Authorization": f"Bearer {other_key}"})
    assert resp.status == 200
    assert fake_upstream.state.log[-1]["headers"]["Authorization"] == "Bearer sk-gateway-own-key"

    await db.execute("UPDATE provider_credentials SET ciphertext = "
                     "set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)")

    async def refused() -> bool:
        resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth)
        return resp.status == 503

    await _seconds_until(refused, within=1.5)
    received = fake_upstream.state.received
    resp = await gateway.post("/v1/chat/completions", json=chat_body(), headers=auth)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "credentials_unavailable"
    assert fake_upstream.state.received == received  # no call on the gateway's own key
