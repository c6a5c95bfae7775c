"""`Answer`: a complete response whose head and body leave in one write, with little work.

aiohttp's way to a response runs about a dozen coroutine frames a call (`prepare`, two
`_start`s, `_prepare_headers`, the prepare signal, `_write_headers`, `write_headers`, then
three `write_eof`s), general enough for cookies, compression, chunking, HTTP/1.0 and bodies
that must be empty: about 8 us of a proxied call under load, as much as the bare proxy's
whole routing. A proxied call's answer is none of those: a body of known length, status 200,
to an HTTP/1.1 client. `Answer` serializes its head the way aiohttp does (the same headers,
`Date`, `Server` and `Connection` included, and the same check against CR and LF) and hands
head and body to the writer together; any other case takes aiohttp's own path.

It relies on aiohttp's response and writer attributes, as `connections.Connection` relies
on its protocol's; `tests/test_answer.py` holds it to aiohttp's own output.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import StreamWriter, _serialize_headers

_STATUS_LINE = "HTTP/1.1 200 OK"
# Writers that hold the head back until the body (aiohttp 3.12 on): older ones write it at
# once, and their responses take aiohttp's path.
_HEAD_WAITS_FOR_BODY = hasattr(StreamWriter, "_send_headers_with_payload")


class Answer(web.Response):
    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        body = self._body
        if (not _HEAD_WAITS_FOR_BODY or self._payload_writer is not None or self._eof_sent
                or self._status != 200 or request.version != HttpVersion11
                or type(body) is not bytes or self._cookies or self._compression
                or self._chunked):
            return await super().prepare(request)
        writer = request._payload_writer
        keep_alive = request.keep_alive if self._keep_alive is None else self._keep_alive
        self._keep_alive = keep_alive
        self._req = request
        self._payload_writer = writer
        headers = self._headers
        headers[hdrs.CONTENT_LENGTH] = str(len(body))
        headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
        if not keep_alive and hdrs.CONNECTION not in headers:
            headers[hdrs.CONNECTION] = "close"
        await request._prepare_hook(self)
        # What `write_headers` and `write_eof` do, in one step: the head waits in the writer
        # and leaves with the body.
        writer._headers_buf = _serialize_headers(_STATUS_LINE, headers)  # type: ignore[attr-defined]
        writer._headers_written = False  # type: ignore[attr-defined]
        await writer.write_eof(body)
        self._eof_sent = True
        self._body_length = writer.output_size
        self._req = None
        self._payload_writer = None
        return writer
