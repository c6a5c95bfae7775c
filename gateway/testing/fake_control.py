"""The fake upstream's control routes: the behaviour script, the request log, health."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.testing.fake_behaviour import STATE, behaviour_problem, json_response


async def post_script(request: web.Request) -> web.Response:
    """``POST /_fake/script``: queue behaviours (a list, or a single object)."""
    try:
        items = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return json_response({"error": "body must be JSON"}, 400)
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list):
        return json_response({"error": "body must be a list of behaviour objects"}, 400)
    for item in items:
        problem = behaviour_problem(item)
        if problem is not None:
            return json_response({"error": problem}, 400)
    script = request.app[STATE].script
    script.extend(items)
    return json_response({"queued": len(script)})


async def delete_script(request: web.Request) -> web.Response:
    """``DELETE /_fake/script``: drop all queued behaviours."""
    request.app[STATE].script.clear()
    return json_response({"queued": 0})


async def get_requests(request: web.Request) -> web.Response:
    """``GET /_fake/requests``: the received counter and the last requests (every provider
    route; each entry has method, path, query, headers and the parsed body)."""
    state = request.app[STATE]
    requests = [
        {**entry, "headers": {str(k): v for k, v in entry["headers"].items()}}
        for entry in state.log
    ]
    return json_response({"count": state.received, "requests": requests})


async def delete_requests(request: web.Request) -> web.Response:
    """``DELETE /_fake/requests``: reset the counter and the log."""
    state = request.app[STATE]
    state.received = 0
    state.log.clear()
    return json_response({"count": 0, "requests": []})


async def health(request: web.Request) -> web.Response:
    """``GET /_fake/health``."""
    return json_response({"ok": True})
