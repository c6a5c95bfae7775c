"""`connections.direct_handler`: requests to fixed paths skip aiohttp's router, nothing else.

A small application runs behind the gateway's own runner (`ConnectionRunner`) on 127.0.0.1;
its middleware notes what each request saw. A request that took the shortcut carries the
route's shared match info (the same object every time); one that took aiohttp's
`Application._handle` carries a match info the router made for it alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.connections import ConnectionRunner, direct_handler
from gateway.settings import ServerSettings

SEEN = web.AppKey("seen", list)


def make_app() -> web.Application:
    @web.middleware
    async def note(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info
        request.app[SEEN].append((request.method, request.path, info, info.route,
                                  request.app is app))
        response = await handler(request)
        response.headers["X-Noted"] = "yes"
        return response

    async def fixed(request: web.Request) -> web.Response:
        return web.Response(text=f"fixed {request.method} {await request.text()}")

    async def item(request: web.Request) -> web.Response:
        return web.Response(text=f"item {request.match_info['id']}")

    async def first(request: web.Request) -> web.Response:
        return web.Response(text="first")

    async def second(request: web.Request) -> web.Response:
        return web.Response(text="second")

    app = web.Application(middlewares=[note])
    app[SEEN] = []
    app.router.add_get("/fixed", fixed)
    app.router.add_post("/fixed", fixed)
    app.router.add_get("/items/{id}", item)
    app.router.add_get("/twice", first)
    app.router.add_get("/other", second)
    app.router.add_get("/twice", second)  # a second resource: the router answers the first
    return app


@pytest.fixture
async def served() -> AsyncIterator[tuple[web.Application, str]]:
    app = make_app()
    runner = ConnectionRunner(app, ServerSettings(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield app, f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, await r.text(), dict(r.headers)


async def test_fixed_paths_share_their_match_info_and_keep_the_middlewares(
        served: tuple[web.Application, str]) -> None:
    app, base = served
    status, text, headers = await call("GET", f"{base}/fixed")
    assert (status, text, headers["X-Noted"]) == (200, "fixed GET ", "yes")
    assert (await call("POST", f"{base}/fixed?x=1", data=b"body"))[:2] == (200,
                                                                          "fixed POST body")
    assert (await call("GET", f"{base}/fixed"))[:2] == (200, "fixed GET ")
    assert (await call("GET", f"{base}/items/7"))[:2] == (200, "item 7")
    assert (await call("GET", f"{base}/items/8"))[:2] == (200, "item 8")
    seen = app[SEEN]
    gets = [s for s in seen if s[:2] == ("GET", "/fixed")]
    assert len({id(s[2]) for s in gets}) == 1  # one match info for all: the shortcut
    assert all(s[3].method == "GET" and s[3].resource.canonical == "/fixed" and s[4]
               for s in gets)
    post = next(s for s in seen if s[0] == "POST")
    assert post[3].method == "POST" and post[2] is not gets[0][2]
    items = [s for s in seen if s[1].startswith("/items/")]
    assert items[0][2] is not items[1][2]  # a path with a variable: the router, each time


async def test_expect_other_methods_and_unknown_paths_take_aiohttp_s_way(
        served: tuple[web.Application, str]) -> None:
    app, base = served
    await call("GET", f"{base}/fixed")
    shared = app[SEEN][-1][2]
    status, text, _ = await call("POST", f"{base}/fixed", data=b"x",
                                 headers={"Expect": "100-continue"})
    assert (status, text) == (200, "fixed POST x")
    assert app[SEEN][-1][2] is not shared  # aiohttp answered 100 Continue first
    status, _, headers = await call("DELETE", f"{base}/fixed")
    assert status == 405 and set(headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    assert (await call("GET", f"{base}/nowhere"))[0] == 404
    status, text, headers = await call("HEAD", f"{base}/fixed")
    assert (status, text, headers["X-Noted"]) == (200, "", "yes")
    assert (await call("GET", f"{base}/twice"))[:2] == (200, "first")


async def empty(request: web.Request) -> web.Response:
    return web.Response()


async def test_no_shortcut_with_old_style_middlewares_or_a_domain_sub_application() -> None:
    async def old_style(app: web.Application, handler: Handler) -> Handler:
        return handler

    app = web.Application(middlewares=[old_style])  # type: ignore[list-item]
    app.router.add_get("/fixed", empty)
    assert await direct_handler(app) is None
    app = web.Application()
    app.router.add_get("/fixed", empty)
    app.add_domain("example.com", web.Application())
    assert await direct_handler(app) is None
    app = web.Application()
    app.router.add_get("/items/{id}", empty)
    assert await direct_handler(app) is None  # no fixed path: aiohttp's handler alone
