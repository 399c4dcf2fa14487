"""Fixtures shared by the bus tests: a throwaway PKI (made with the openssl CLI)
and TLS contexts from it, for the TLS tests and the transport conformance suite."""

import shutil
import ssl
import subprocess

import pytest


def _run(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=d)
    for name, san in (("server", "IP:127.0.0.1"), ("client", "DNS:client")):
        _run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )
    return d


class Tls:
    """TLS contexts from the test PKI."""

    def __init__(self, pki):
        self.pki = pki

    def server(self, mutual: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.pki / "server.pem", self.pki / "server.key")
        if mutual:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.pki / "ca.pem")
        return ctx

    def client(self, with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.pki / "ca.pem"))
        if with_cert:
            ctx.load_cert_chain(self.pki / "client.pem", self.pki / "client.key")
        return ctx


@pytest.fixture
def tls(pki):
    return Tls(pki)
