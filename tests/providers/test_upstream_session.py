"""The upstream session keeps no cookies: what one provider answer sets never rides along
on the next call, which may be another project's."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.providers import configured_credentials, create_adapter
from gateway.providers.base import Upstream
from gateway.settings import settings_from_mapping


async def test_a_cookie_an_upstream_sets_is_not_sent_back() -> None:
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.json_response({"ok": True})
        response.set_cookie("__cf_bm", "project-one-session", path="/")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    settings = settings_from_mapping({}, {}).providers["openai"]
    upstream = Upstream(create_adapter("openai", settings), settings,
                        configured_credentials(settings))
    await upstream.start()
    try:
        # A host name: aiohttp's jar would ignore cookies from a bare IP address anyway.
        url = f"http://localhost:{server.port}/v1/chat/completions"
        for _ in range(2):
            async with upstream.session.post(url, data=b"{}") as response:
                assert response.status == 200
                assert "__cf_bm" in response.cookies  # it was set...
        assert seen == [None, None]  # ...and never sent back
    finally:
        await upstream.close()
        await server.close()
