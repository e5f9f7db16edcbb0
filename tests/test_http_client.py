"""The request-path HTTP client (turnout.upstreams.http) against real sockets with scripted answers.

The proxy's fault matrix (tests/test_proxy.py) drives it through the fake upstream; these cover the
framing and pooling cases a well-behaved fake never produces.
"""

from __future__ import annotations

import asyncio
import gzip
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from turnout.errors import UpstreamConnectError, UpstreamDropped, UpstreamTimeout
from turnout.upstreams.http import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


def run(handler: Handler, test: Callable[[ConnectionPool, list[int]], Awaitable[None]], **pool: float) -> None:
    """Serve `handler` on a random port; `test` gets a pool for it and the list of connections accepted."""

    async def main() -> None:
        accepted: list[int] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        p = ConnectionPool("up", f"http://127.0.0.1:{port}/v1", {"Authorization": "Bearer k"},
                           pool.get("connect", 2.0), pool.get("read", 2.0), int(pool.get("limit", 8)))  # fmt: skip
        try:
            await test(p, accepted)
        finally:
            p.close()
            server.close()

    asyncio.run(main())


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra,
        len(body),
        body,
    )


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head, body = await read_request(reader)
        assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and b"Authorization: Bearer k" in head
        writer.write(answer(b'{"echo":' + body + b"}"))
        await writer.drain()


def test_a_keep_alive_connection_serves_request_after_request() -> None:
    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        for i in range(5):
            resp = await pool.post("/chat/completions", b"%d" % i)
            assert (resp.status, resp.content_type) == (200, "application/json")
            assert await resp.read() == b'{"echo":%d}' % i
        assert len(accepted) == 1

    run(keep_answering, test)


def test_concurrent_requests_past_the_limit_wait_for_a_connection() -> None:
    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        async def one(i: int) -> bytes:
            return await (await pool.post("/chat/completions", b"%d" % i)).read()

        bodies = await asyncio.gather(*(one(i) for i in range(20)))
        assert bodies == [b'{"echo":%d}' % i for i in range(20)]
        assert len(accepted) <= 2

    run(keep_answering, test, limit=2)


def test_chunked_bodies_arrive_chunk_by_chunk_and_end_cleanly() -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"3\r\nabc\r\n0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # the connection is reused for a second request
        writer.write(answer(b"{}"))

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        resp = await pool.post("/chat/completions", b"{}")
        assert resp.content_type == "text/event-stream"
        assert await resp.next_chunk() == b"data: "
        release.set()
        assert await resp.next_chunk() == b"abc"
        assert await resp.next_chunk() == b""
        assert await (await pool.post("/chat/completions", b"{}")).read() == b"{}"
        assert len(accepted) == 1

    run(handler, test)


def test_a_body_that_ends_with_the_connection_is_complete_and_not_reused() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        assert await (await pool.post("/chat/completions", b"{}")).read() == b"until the end"
        assert await (await pool.post("/chat/completions", b"{}")).read() == b"until the end"
        assert len(accepted) == 2

    run(handler, test)


def test_gzip_is_decoded_should_an_upstream_compress_anyway() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await read_request(reader)
        assert b"Accept-Encoding: identity" in head
        writer.write(answer(gzip.compress(b'{"ok":true}'), b"Content-Encoding: gzip\r\n"))

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        assert await (await pool.post("/chat/completions", b"{}")).read() == b'{"ok":true}'

    run(handler, test)


def test_status_and_headers_of_an_error_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 2\r\n\r\n{}")

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        resp = await pool.post("/chat/completions", b"{}")
        assert (resp.status, resp.header(b"retry-after"), await resp.read()) == (429, "2", b"{}")

    run(handler, test)


@pytest.mark.parametrize("when", ["before the headers", "mid-body"])
def test_a_dropped_connection_is_an_upstream_dropped_error(when: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if when == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
            await writer.drain()
        writer.transport.abort()

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        with pytest.raises(UpstreamDropped):
            resp = await pool.post("/chat/completions", b"{}")
            await resp.read()
        assert await asyncio.sleep(0) is None and pool._open == 0  # closed, never pooled

    run(handler, test)


def test_a_silent_upstream_times_out_waiting_for_headers_and_between_chunks() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(0.5)  # no headers within the read timeout
        await read_request(reader)

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        with pytest.raises(UpstreamTimeout):
            await pool.post("/chat/completions", b"{}")

    run(handler, test, read=0.1)

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async def test_stall(pool: ConnectionPool, accepted: list[int]) -> None:
        resp = await pool.post("/chat/completions", b"{}")
        assert await resp.next_chunk() == b"some"
        with pytest.raises(UpstreamTimeout):
            await resp.next_chunk()

    run(stalls, test_stall, read=0.1)


def test_nobody_listening_is_a_connect_error() -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        pool = ConnectionPool("up", f"http://127.0.0.1:{port}/v1", {}, 1.0, 1.0, 4)
        with pytest.raises(UpstreamConnectError, match="cannot connect to upstream `up`"):
            await pool.post("/chat/completions", b"{}")
        assert pool._open == 0

    asyncio.run(main())


def test_a_cancelled_request_closes_its_connection_and_frees_its_slot() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        task = asyncio.ensure_future(pool.post("/chat/completions", b"{}"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool._open == 0 and not pool._idle

    run(handler, test, limit=1)


def test_a_response_dropped_unread_gives_its_slot_back() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsome\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async def test(pool: ConnectionPool, accepted: list[int]) -> None:
        resp = await pool.post("/chat/completions", b"{}")
        assert pool._open == 1
        del resp  # never read to its end, never closed
        assert pool._open == 0

    run(handler, test, limit=1)


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate (and key, in the same file) for 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    pem = tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(pem), "-out", str(pem)],
        check=True, capture_output=True,
    )  # fmt: skip
    return pem


@pytest.mark.parametrize("trusted", [True, False])
def test_https_upstreams_speak_tls_and_verify_the_certificate(
    certificate: Path, trusted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if trusted:  # the system trust store, as OpenSSL reads it, extended the documented way
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate))

    async def main() -> None:
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(certificate)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await read_request(reader)
                writer.write(answer(b'{"tls":true}'))
                await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool("up", f"https://127.0.0.1:{port}/v1", {}, 2.0, 2.0, 4)
        try:
            if trusted:
                assert await (await pool.post("/chat/completions", b"{}")).read() == b'{"tls":true}'
            else:
                with pytest.raises(UpstreamConnectError, match="SSLCertVerificationError"):
                    await pool.post("/chat/completions", b"{}")
        finally:
            pool.close()
            server.close()

    asyncio.run(main())
