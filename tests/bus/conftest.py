"""Fixtures shared by the bus tests: a throwaway PKI (made with the openssl CLI)
and TLS contexts from it, for the TLS tests and the transport conformance suite;
``raw_channel``, a hostile client that does the channel handshake by hand over a
bare TCP stream and then controls every byte, and ``unsigned_envelope``, the
wire bytes a channel carries."""

import shutil
import ssl
import subprocess

import pytest
import trio


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


class RawChannel:
    """A hostile client's channel done by hand over a bare TCP stream: the
    handshake of :mod:`bus.channel` (so the attack comes after it), then full
    control of what goes on the wire (sealed envelopes, proofs, raw bytes, half
    frames) and of what is read back."""

    def __init__(self, stream, channel, decoder, frames):
        self.stream, self.channel, self.decoder, self.frames = stream, channel, decoder, frames

    @classmethod
    async def open(cls, address, prove=None, local_address=None):
        from bus import FrameDecoder, Handshake, encode_frame, parse_address

        where = parse_address(address)
        stream = await trio.open_tcp_stream(where.host, where.port, local_address=local_address)
        try:
            hs = Handshake(initiator=True)
            await stream.send_all(encode_frame(hs.hello))
            decoder = FrameDecoder()
            frames = []
            while not frames:
                data = await stream.receive_some(65536)
                assert data, "the node closed the connection during the handshake"
                frames.extend(decoder.feed(data))
            raw = cls(stream, hs.finish(frames.pop(0)), decoder, frames)
            for agent, signer in (prove or {}).items():
                await raw.prove(agent, signer)
        except BaseException:  # cancelled or refused mid-handshake: do not leak the socket
            await trio.aclose_forcefully(stream)
            raise
        return raw

    def sealed(self, payload, frame_type=0):
        """The wire bytes (length header included) of the next sealed frame."""
        from bus import encode_frame

        frame = self.channel.seal(frame_type, payload)
        return encode_frame(frame, max(len(frame), 1))  # the attacker sets its own limit

    async def send(self, envelope_bytes):
        await self.stream.send_all(self.sealed(envelope_bytes))

    async def prove(self, agent, signer):
        await self.stream.send_all(self.sealed(self.channel.make_proof(agent, signer), frame_type=1))

    async def receive(self):
        """The next envelope from the node (proofs recorded on the way); None at EOF."""
        from bus import decode_envelope

        while True:
            while not self.frames:
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.frames.extend(self.decoder.feed(data))
            frame_type, payload = self.channel.open(self.frames.pop(0))
            if frame_type == 0:  # (the node may name agents by their aliases on the channel)
                return decode_envelope(payload, aliases=(self.channel.their_names, self.channel.own_names))
            self.channel.add_claim(payload)

    async def aclose(self):
        await trio.aclose_forcefully(self.stream)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


def unsigned(sender, recipient="bob", kind="ping", body=1, mtype=None, msg_id=None, correlation_id=None):
    """A compact envelope's wire bytes (what a channel carries); ``msg_id`` a random
    64-bit id unless given, a bytes ``correlation_id`` read as a big-endian int."""
    import secrets

    from bus import MessageType
    from bus.envelope import encode_compact

    if isinstance(correlation_id, bytes):
        correlation_id = int.from_bytes(correlation_id, "big")
    return encode_compact(mtype or MessageType.REQUEST, kind, secrets.randbits(64) if msg_id is None else msg_id,
                          correlation_id, sender, recipient, body)


@pytest.fixture
def raw_channel():
    """``await raw_channel(address, prove={agent: signer})``: a :class:`RawChannel`."""
    return RawChannel.open


@pytest.fixture
def unsigned_envelope():
    """``unsigned_envelope(sender, recipient="bob", kind="ping", body=1)``: wire bytes."""
    return unsigned
