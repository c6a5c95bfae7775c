"""HTTP/1.1 answers as bytes arrive: the lean client's errors and its response parser.

The parser is fed whatever the socket delivers (a whole answer or one byte at a time) and
says when the head is known (`head_done`) and when the body is complete (`done`). It skips
interim 1xx answers and frames the body by Content-Length, chunked coding (extensions and
trailers ignored) or the end of the connection; 204 and 304 have none.
"""

from __future__ import annotations

from typing import Final

MAX_HEAD_BYTES: Final = 64 * 1024

# Body framings.
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3
NONE: Final = 4


class Http1Error(Exception):
    """The connection failed or the upstream's answer was not HTTP/1.1 we can read."""


class Http1ConnectError(Http1Error):
    """No connection could be made; `os_error` says why (refused, unreachable, DNS, TLS)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class Http1Closed(Http1Error):
    """The upstream closed the connection; `early` when before any byte of the answer."""

    def __init__(self, message: str, early: bool = False) -> None:
        super().__init__(message)
        self.early = early


class ResponseParser:
    """One answer at a time; `reset()` before the next on the same connection."""

    __slots__ = (
        "buf",
        "chunks",
        "done",
        "framing",
        "head_done",
        "headers",
        "keep_alive",
        "length",
        "pending",
        "pos",
        "received",
        "start",
        "status",
        "taken",
    )

    def __init__(self) -> None:
        self.buf = bytearray()
        self.reset()

    def reset(self) -> None:
        self.buf.clear()
        self.start = 0  # where the body starts in buf
        self.pos = 0  # chunked: where the next chunk-size line starts in buf
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.head_done = False
        self.done = False
        self.received = False
        self.keep_alive = True
        self.framing = 0
        self.length = 0
        self.chunks: list[bytes] = []
        self.pending = 0  # chunked: bytes in `chunks`, not yet taken
        self.taken = 0  # body bytes handed out by take()

    def feed(self, data: bytes) -> None:
        """More bytes from the connection; raises `Http1Error` where they cannot be read."""
        if self.done:
            raise Http1Error("the upstream sent bytes after its answer")
        self.received = True
        self.buf += data
        if not self.head_done and not self._head():
            return
        framing = self.framing
        if framing == LENGTH:
            size = len(self.buf) - self.start + self.taken
            if size >= self.length:
                if size > self.length:
                    raise Http1Error("the upstream sent bytes after its answer")
                self.done = True
        elif framing == CHUNKED:
            self._chunks()
        elif framing == NONE:
            if len(self.buf) > self.start:
                raise Http1Error("the upstream sent a body with a bodiless answer")
            self.done = True

    def feed_eof(self) -> None:
        """The upstream closed its side: that ends a body framed by the close."""
        if self.head_done and self.framing == UNTIL_CLOSE:
            self.done = True

    def body(self) -> bytes:
        if self.framing == CHUNKED:
            return b"".join(self.chunks)
        return bytes(self.buf[self.start:])

    def take(self) -> bytes:
        """The body bytes parsed since the last take (a stream, read as it arrives)."""
        if self.framing == CHUNKED:
            chunks = self.chunks
            if not chunks:
                return b""
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            self.pending = 0
            return data
        buf, start = self.buf, self.start
        if len(buf) <= start:
            return b""
        data = bytes(buf[start:])
        del buf[start:]
        self.taken += len(data)
        return data

    @property
    def buffered(self) -> int:
        """Body bytes parsed and not yet taken."""
        if self.framing == CHUNKED:
            return self.pending
        return max(len(self.buf) - self.start, 0) if self.head_done else 0

    def _head(self) -> bool:
        """Parse the head once it is all there (skipping 1xx answers); whether it is."""
        buf = self.buf
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise Http1Error("the upstream's answer head is too large")
                return False
            lines = buf[:end].decode("latin-1").split("\r\n")
            del buf[:end + 4]
            status, http10 = _status(lines[0])
            if status >= 200:
                break
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
        self.status = status
        self.head_done = True
        self._headers(lines, http10)
        return True

    def _headers(self, lines: list[str], http10: bool) -> None:
        headers = self.headers
        length: str | None = None
        coding: str | None = None
        connection = ""
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise Http1Error(f"the upstream sent a bad header line {line[:80]!r}")
            value = value.strip(" \t")
            headers.append((name, value))
            lower = name.lower()
            if lower == "content-length":
                if length is not None and length != value:
                    raise Http1Error("the upstream sent two Content-Length headers")
                length = value
            elif lower == "transfer-encoding":
                coding = value if coding is None else f"{coding}, {value}"
            elif lower == "connection":
                connection = f"{connection},{value.lower()}"
        tokens = {t.strip() for t in connection.split(",")}
        self.keep_alive = "keep-alive" in tokens if http10 else "close" not in tokens
        if self.status in (204, 304):
            self.framing = NONE
        elif coding is not None:
            if length is not None:
                raise Http1Error("the upstream sent Transfer-Encoding with Content-Length")
            if coding.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self.framing = CHUNKED
            else:  # another final coding: the body ends with the connection (RFC 9112 6.3)
                self.framing = UNTIL_CLOSE
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise Http1Error(f"the upstream sent a bad Content-Length {length[:40]!r}")
            self.framing = LENGTH
            self.length = int(length)
        else:
            self.framing = UNTIL_CLOSE
        if self.framing == UNTIL_CLOSE:
            self.keep_alive = False

    def _chunks(self) -> None:
        """Take every complete chunk in buf; at the last one, the trailers' end."""
        buf = self.buf
        pos = self.pos
        chunks = self.chunks
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size_text = buf[pos:eol].split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise Http1Error(f"the upstream sent a bad chunk size {bytes(size_text[:20])!r}"
                                 ) from None
            if size < 0 or size_text[:1] in (b"-", b"+"):
                raise Http1Error("the upstream sent a bad chunk size")
            if size == 0:
                self._trailers(eol + 2)
                break
            end = eol + 2 + size
            if len(buf) < end + 2:
                break
            if buf[end:end + 2] != b"\r\n":
                raise Http1Error("the upstream sent a chunk without its line end")
            chunks.append(bytes(buf[eol + 2:end]))
            self.pending += size
            pos = end + 2
        # What was taken is dropped, so a long body is not searched again and again.
        del buf[:pos]
        self.pos = 0

    def _trailers(self, at: int) -> None:
        """After the last chunk: trailer lines (ignored), then an empty line ends the body."""
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", at)
            if eol < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise Http1Error("the upstream's trailers are too large")
                return
            if eol == at:
                if len(buf) > eol + 2:
                    raise Http1Error("the upstream sent bytes after its answer")
                self.done = True
                return
            at = eol + 2


def _status(line: str) -> tuple[int, bool]:
    """The status code of a status line, and whether it is HTTP/1.0."""
    code = line[9:12]
    if (line[:7] != "HTTP/1." or line[7:8] not in ("0", "1") or line[8:9] != " "
            or not (code.isascii() and code.isdigit()) or line[12:13] not in ("", " ")):
        raise Http1Error(f"the upstream sent a bad status line {line[:80]!r}")
    return int(code), line[7] == "0"
