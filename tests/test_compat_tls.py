# tls.start_tls on both runtimes over real loopback sockets with trustme
# certificates: a CPython peer and a MicroPython peer upgrade a plaintext
# conversation to TLS (STARTTLS), in both directions.
import asyncio
import socket
import ssl

import pytest
import trustme
from helpers.upy import run_micropython

from meta1lite import tls

UPY_CLIENT = """
import sys
from meta1lite import compat, streams, tls
asyncio = compat.asyncio
async def main(port, ca):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"STARTTLS\\n"); await w.drain()
    assert await r.readline() == b"GO\\n"
    ctx = tls.client_tls_context(verify=True, ca_file=ca)
    r, w = await tls.start_tls(r, w, ctx, False, "localhost")
    await streams.write_all(w, b"PING\\n")
    print((await r.readline()).decode().strip())
    await streams.close_stream(w)
asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
"""

UPY_SERVER = """
import sys
from meta1lite import compat, streams, tls
asyncio = compat.asyncio
done = asyncio.Event()
async def session(r, w):
    assert await r.readline() == b"STARTTLS\\n"
    await streams.write_all(w, b"GO\\n")
    ctx = tls.server_tls_context(sys.argv[2], sys.argv[3])
    r, w = await tls.start_tls(r, w, ctx, True)
    line = await r.readline()
    await streams.write_all(w, b"PONG " + line)
    await streams.close_stream(w)
    done.set()
async def main(port):
    srv = await asyncio.start_server(session, "127.0.0.1", port)
    print("listening"); sys.stdout.flush() if hasattr(sys.stdout, "flush") else None
    await done.wait()
    srv.close()
asyncio.run(main(int(sys.argv[1])))
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pem_to_der_matches_the_ssl_module(certs):
    pem = (certs / "cert.pem").read_text()
    assert tls.pem_to_der(pem) == ssl.PEM_cert_to_DER_cert(pem)


def test_micropython_client_upgrades_to_tls_against_cpython_server(certs):
    got = []

    async def session(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        ctx = tls.server_tls_context(str(certs / "cert.pem"), str(certs / "key.pem"))
        reader, writer = await tls.start_tls(reader, writer, ctx, True)
        got.append(writer.get_extra_info("ssl_object") is not None)
        line = await reader.readline()
        writer.write(b"PONG " + line)
        await writer.drain()
        writer.close()

    async def main():
        srv = await asyncio.start_server(session, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        proc = await asyncio.to_thread(run_micropython, ["-c", UPY_CLIENT, str(port),
                                                         str(certs / "ca.pem")])
        srv.close()
        return proc

    proc = asyncio.run(main())
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "PONG PING"
    assert got == [True]


def test_cpython_client_upgrades_to_tls_against_micropython_server(certs):
    import subprocess
    import time

    from helpers.upy import find_micropython, micropython_env
    exe = find_micropython()
    if exe is None:
        run_micropython(["-c", "pass"])     # fails in CI, skips elsewhere
    port = free_port()
    proc = subprocess.Popen([exe, "-X", "heapsize=192K", "-c", UPY_SERVER, str(port),
                             str(certs / "cert.pem"), str(certs / "key.pem")],
                            env=micropython_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"listening"

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"STARTTLS\n")
            await writer.drain()
            assert await reader.readline() == b"GO\n"
            ctx = tls.client_tls_context(True, str(certs / "ca.pem"))
            reader, writer = await tls.start_tls(reader, writer, ctx, False, "localhost")
            writer.write(b"PING\n")
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line, writer.get_extra_info("peercert")

        line, peercert = asyncio.run(asyncio.wait_for(client(), 30))
        assert line == b"PONG PING\n"
        assert peercert and ("DNS", "localhost") in peercert["subjectAltName"]
    finally:
        time.sleep(0.2)
        proc.kill()
        proc.wait()


def test_a_client_hello_that_comes_while_the_server_loop_turns_is_not_lost(certs):
    # smtps drops what a client pipelined after STARTTLS, writes its 220, then starts
    # TLS; the event loop may turn in between (CPython 3.10's wait_for runs the write
    # in a task). The client's ClientHello, which follows the 220, must then wait for
    # the handshake, not be read into the plaintext buffer (the handshake hung until
    # io_timeout and the client saw EOF).
    got = []

    async def session(reader, writer):
        assert await reader.readline() == b"STARTTLS\r\n"
        tls.discard_plaintext(reader, writer)
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)            # the loop turns: the ClientHello arrives
        ctx = tls.server_tls_context(str(certs / "cert.pem"), str(certs / "key.pem"))
        reader, writer = await asyncio.wait_for(tls.start_tls(reader, writer, ctx, True), 5)
        got.append(await reader.readline())
        writer.close()

    def client(port):
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"STARTTLS\r\n")
            assert s.recv(100).startswith(b"220")
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                t.sendall(b"NOOP\r\n")

    async def main():
        srv = await asyncio.start_server(session, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        await asyncio.to_thread(client, port)
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.1)
        srv.close()

    asyncio.run(main())
    assert got == [b"NOOP\r\n"]
