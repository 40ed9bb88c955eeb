"""The CLI against a daemon that serves HTTPS itself: it trusts the daemon's own certificate
without flags, another one only with --cacert, and says in one line when it trusts none."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from responder import cli
from responder.app import build_app
from responder.runtime import load_snapshot
from responder.testing import self_signed_cert
from tests.conftest import write_config

NAME = "responder.example.org"  # what the certificates name; never 127.0.0.1


def daemon_config(folder: Path, port: int, cert: Path, key: Path) -> Path:
    """A config in ``folder`` for a daemon on 127.0.0.1:``port`` serving ``cert``."""
    folder.mkdir(exist_ok=True)
    server = (
        f"server:\n  listen: 127.0.0.1:{port}\n  tls:\n    cert_file: {cert}\n    key_file: {key}\n"
    )
    return write_config(folder, server)


@asynccontextmanager
async def https_daemon(folder: Path, cert: Path, key: Path) -> AsyncIterator[tuple[Path, int]]:
    """The daemon served as ``responder serve`` serves it, on 127.0.0.1 with ``cert``;
    yields its config (which names the address) and its port."""
    (sock,) = cli.listening_sockets("127.0.0.1", 0)
    port = sock.getsockname()[1]
    snapshot = load_snapshot(daemon_config(folder, port, cert, key))
    runner = web.AppRunner(build_app(snapshot), **cli.runner_options(snapshot.config))
    await runner.setup()
    try:
        await web.SockSite(runner, sock, ssl_context=cli.server_tls(snapshot.config)).start()
        yield snapshot.config.path, port
    finally:
        await runner.cleanup()


async def run_cli(*args: str) -> int:
    # In a thread: the command runs its own event loop, as it does from a shell.
    return await asyncio.to_thread(cli.main, list(args))


def ca_issued_cert(folder: Path, ca: tuple[Path, Path], hostname: str) -> tuple[Path, Path]:
    """A certificate for ``hostname`` that ``ca`` issued, in ``folder``, with the CA after
    it in ``cert.pem`` (a chain, as a certificate authority delivers it)."""
    folder.mkdir()
    leaf, key, request = folder / "leaf.pem", folder / "key.pem", folder / "request.pem"
    extensions = folder / "extensions.cnf"
    extensions.write_text(f"subjectAltName=DNS:{hostname}\n")
    files = ["-keyout", str(key), "-out", str(request)]
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(
        ["openssl", "req", "-new", *new_key, "-subj", f"/CN={hostname}", *files],
        check=True,
        capture_output=True,
        timeout=30,
    )
    signed = ["-days", "2", "-extfile", str(extensions), "-out", str(leaf)]
    issuer = ["-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial"]
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(request), *issuer, *signed],
        check=True,
        capture_output=True,
        timeout=30,
    )
    chain = folder / "cert.pem"
    chain.write_text(leaf.read_text() + ca[0].read_text())
    return chain, key


@pytest.fixture
def own_cert(tmp_path: Path) -> tuple[Path, Path]:
    """The daemon's self-signed certificate, which does not name 127.0.0.1."""
    (tmp_path / "tls").mkdir()
    return self_signed_cert(tmp_path / "tls", NAME, with_loopback_ip=False)


async def test_the_daemons_own_certificate_is_trusted_at_its_listen_address(
    tmp_path: Path, own_cert: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No flags: the CLI dials 127.0.0.1, which the certificate does not name, and trusts
    the daemon because it presents exactly its server.tls.cert_file."""
    async with https_daemon(tmp_path, *own_cert) as (config, _port):
        assert await run_cli("incidents", "-c", str(config)) == 0
    assert capsys.readouterr().err == ""


async def test_with_url_the_daemons_own_certificate_is_trusted_for_the_name_it_carries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--url https://localhost:PORT reaches a self-signed daemon whose certificate names
    localhost: the config's certificate is trusted there too, not only this system's CAs."""
    (tmp_path / "tls").mkdir()
    cert = self_signed_cert(tmp_path / "tls", "localhost", with_loopback_ip=False)
    async with https_daemon(tmp_path, *cert) as (config, port):
        url = f"https://localhost:{port}"
        assert await run_cli("incidents", "-c", str(config), "--url", url) == 0
        # The name is still checked: the certificate does not name 127.0.0.1.
        url = f"https://127.0.0.1:{port}"
        assert await run_cli("incidents", "-c", str(config), "--url", url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "certificate is not valid for '127.0.0.1'" in err


async def test_cacert_trusts_the_file_given_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cacert replaces the trust: a copy of the daemon's certificate works at a URL with
    the name it carries; another certificate is refused in one line saying why and what to
    do, exit 2 (retrying cannot help), and so is a URL whose host it does not name."""
    (tmp_path / "tls").mkdir()
    cert, key = self_signed_cert(tmp_path / "tls", "localhost", with_loopback_ip=False)
    (tmp_path / "other").mkdir()
    other, _ = self_signed_cert(tmp_path / "other", "localhost", with_loopback_ip=False)
    async with https_daemon(tmp_path, cert, key) as (config, port):
        url = f"https://localhost:{port}"
        common = ["incidents", "-c", str(config), "--url", url]
        assert await run_cli(*common, "--cacert", str(cert)) == 0
        assert capsys.readouterr().err == ""

        assert await run_cli(*common, "--cacert", str(other)) == 2
        assert capsys.readouterr().err == (
            f"responder: the daemon at {url} presented a certificate this command does not "
            f"trust (self-signed certificate); {other} (--cacert) is not its certificate "
            "nor the CA that issued it, or the certificate does not name the host of the "
            "URL (choose it with --url)\n"
        )

        # Without --url: the listen address, 127.0.0.1, which the certificate does not name.
        assert await run_cli("incidents", "-c", str(config), "--cacert", str(cert)) == 2
        err = capsys.readouterr().err
        assert "certificate is not valid for '127.0.0.1'" in err
        assert err.count("\n") == 1, err


async def test_a_pinned_certificate_is_the_leaf_not_its_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cert_file holding a CA-issued certificate and its CA: the CLI trusts the daemon's
    certificate, not the CA, so another server with any certificate of that CA is refused
    (the host name is not checked at the listen address, so trusting the CA would let it
    pass for the daemon)."""
    (tmp_path / "ca").mkdir()
    ca = self_signed_cert(tmp_path / "ca", "test-ca.example.org", with_loopback_ip=False)
    own = ca_issued_cert(tmp_path / "own", ca, NAME)
    impostor = ca_issued_cert(tmp_path / "impostor", ca, "somewhere.example.org")
    async with https_daemon(tmp_path / "own", *own) as (config, _port):
        assert await run_cli("incidents", "-c", str(config)) == 0
    async with https_daemon(tmp_path / "impostor", *impostor) as (_config, port):
        # The operator's config, with the real certificate, and the address the impostor holds.
        operator = daemon_config(tmp_path / "operator", port, *own)
        assert await run_cli("incidents", "-c", str(operator)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"it is not server.tls.cert_file ({own[0]}): after a renewal, restart" in err


def expired_cert(folder: Path, hostname: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname`` that was valid for one day in 2020."""
    folder.mkdir()
    cert, key, request = folder / "cert.pem", folder / "key.pem", folder / "request.pem"
    (folder / "index.txt").touch()
    (folder / "serial").write_text("01\n")
    settings = folder / "ca.cnf"
    settings.write_text(
        f"[ca]\ndefault_ca = d\n[d]\ndatabase = {folder}/index.txt\nserial = {folder}/serial\n"
        f"new_certs_dir = {folder}\ndefault_md = sha256\npolicy = p\ncopy_extensions = copy\n"
        "[p]\ncommonName = supplied\n"
    )
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    names = ["-subj", f"/CN={hostname}", "-addext", f"subjectAltName=DNS:{hostname}"]
    subprocess.run(
        ["openssl", "req", "-new", *new_key, *names, "-keyout", str(key), "-out", str(request)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    dates = ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
    signed = ["-selfsign", "-keyfile", str(key), "-in", str(request), *dates, "-out", str(cert)]
    subprocess.run(
        ["openssl", "ca", "-batch", "-config", str(settings), *signed],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


async def test_an_expired_certificate_is_refused_and_said_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon serves exactly its server.tls.cert_file, but it has expired: the pin does
    not make it valid, and the line says to renew it (not that it is another certificate)."""
    cert, key = expired_cert(tmp_path / "tls", NAME)
    async with https_daemon(tmp_path, cert, key) as (config, port):
        assert await run_cli("incidents", "-c", str(config)) == 2
    assert capsys.readouterr().err == (
        f"responder: the daemon at https://127.0.0.1:{port} presented a certificate this "
        "command does not trust (certificate has expired); renew it (the daemon's own is "
        "server.tls.cert_file, read at its start), or set this machine's clock right\n"
    )


def test_cacert_with_a_plain_http_daemon_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cacert says "verify the daemon against this": with an http:// daemon nothing
    would be verified, and it was ignored without a word (security review)."""
    cert, _ = self_signed_cert(tmp_path, NAME)
    config = write_config(tmp_path, "server:\n  listen: 127.0.0.1:9\n")
    assert cli.main(["alerts", "-c", str(config), "--cacert", str(cert)]) == 2
    assert "plain HTTP: there is no certificate to check" in capsys.readouterr().err
