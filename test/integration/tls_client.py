#!/usr/bin/python3
"""Raw PostgreSQL client over TLS for the integration tests (run by tls_fixture.cc).

Opens TLS after an SSLRequest, or with --direct sends the ClientHello first (PostgreSQL 17's
direct TLS) offering ALPN "postgresql" unless --no-alpn; then the startup packet, the password
exchange (cleartext, md5, SCRAM-SHA-256, SCRAM-SHA-256-PLUS with --channel-binding) and one
simple query. Prints "tls <version> alpn=<protocol or none>", then "row <first value>" and
exits 0; an ErrorResponse prints "error <SQLSTATE> <message>" and exits 1; a refused or failed
TLS negotiation or a lost connection prints "fail <reason>" and exits 3.
Only the standard library: ssl, hashlib, hmac.
"""

import argparse
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import sys


class Fail(Exception):
    pass


class ServerError(Exception):
    pass


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise Fail("connection closed")
        data += chunk
    return data


def read_msg(sock):
    head = recv_exact(sock, 5)
    kind = head[:1]
    (length,) = struct.unpack("!I", head[1:])
    if length < 4 or length > 1 << 26:
        raise Fail("bad message length %d" % length)
    return kind, recv_exact(sock, length - 4)


def send_msg(sock, kind, body):
    sock.sendall(kind + struct.pack("!I", len(body) + 4) + body)


def error_fields(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1].decode()] = part[1:].decode(errors="replace")
    return fields


def raise_error(body):
    f = error_fields(body)
    raise ServerError("%s %s" % (f.get("C", "?????"), f.get("M", "")))


def scram_attrs(text):
    return dict(item.split("=", 1) for item in text.split(",") if "=" in item)


def end_point(sock):
    # tls-server-end-point (RFC 5929); our test certificates are signed with SHA-256.
    return hashlib.sha256(sock.getpeercert(binary_form=True)).digest()


def login(sock, args):
    params = b"user\0" + args.user.encode() + b"\0database\0" + args.dbname.encode() + b"\0\0"
    body = struct.pack("!I", 196608) + params
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    password = args.password.encode()
    state = {}
    while True:
        kind, body = read_msg(sock)
        if kind == b"E":
            raise_error(body)
        if kind == b"Z":
            return
        if kind != b"R":
            continue
        (code,) = struct.unpack("!I", body[:4])
        if code == 0:
            continue
        if code == 3:
            send_msg(sock, b"p", password + b"\0")
        elif code == 5:
            inner = hashlib.md5(password + args.user.encode()).hexdigest().encode()
            send_msg(sock, b"p", b"md5" + hashlib.md5(inner + body[4:8]).hexdigest().encode() + b"\0")
        elif code == 10:
            mechs = [m.decode() for m in body[4:].split(b"\0") if m]
            plus = args.channel_binding
            if plus and "SCRAM-SHA-256-PLUS" not in mechs:
                raise Fail("the server did not offer SCRAM-SHA-256-PLUS (offered %s)" % mechs)
            mech = "SCRAM-SHA-256-PLUS" if plus else "SCRAM-SHA-256"
            header = "p=tls-server-end-point,," if plus else "n,,"
            nonce = base64.b64encode(os.urandom(18)).decode()
            state["bare"] = "n=,r=" + nonce
            state["header"] = header
            first = (header + state["bare"]).encode()
            send_msg(sock, b"p", mech.encode() + b"\0" + struct.pack("!I", len(first)) + first)
        elif code == 11:
            server_first = body[4:].decode()
            a = scram_attrs(server_first)
            salted = hashlib.pbkdf2_hmac("sha256", password, base64.b64decode(a["s"]), int(a["i"]))
            cbind = state["header"].encode()
            if args.channel_binding:
                cbind += end_point(sock)
            final_bare = "c=" + base64.b64encode(cbind).decode() + ",r=" + a["r"]
            auth = (state["bare"] + "," + server_first + "," + final_bare).encode()
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            sig = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
            proof = bytes(x ^ y for x, y in zip(client_key, sig))
            send_msg(sock, b"p", (final_bare + ",p=" + base64.b64encode(proof).decode()).encode())
            server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
            state["verifier"] = base64.b64encode(hmac.new(server_key, auth, hashlib.sha256).digest())
        elif code == 12:
            if scram_attrs(body[4:].decode()).get("v", "").encode() != state.get("verifier"):
                raise Fail("SCRAM server signature does not match")
        else:
            raise Fail("unsupported authentication request %d" % code)


def query(sock, sql):
    send_msg(sock, b"Q", sql.encode() + b"\0")
    first, err = None, None
    while True:
        kind, body = read_msg(sock)
        if kind == b"E" and err is None:
            err = body
        if kind == b"D" and first is None:
            (n,) = struct.unpack("!i", body[2:6])
            first = "<NULL>" if n < 0 else body[6 : 6 + n].decode()
        if kind == b"Z":
            if err is not None:
                raise_error(err)
            return first


def open_tls(args):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca:
        ctx.load_verify_locations(args.ca)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    if not args.no_alpn:
        ctx.set_alpn_protocols(["postgresql"])
    sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    if not args.direct:
        sock.sendall(struct.pack("!II", 8, 80877103))
        answer = sock.recv(1)
        if answer != b"S":
            raise Fail("server answered %r to the SSLRequest" % answer)
    try:
        return ctx.wrap_socket(sock, server_hostname=args.server_name or None)
    except (ssl.SSLError, ssl.CertificateError) as e:
        raise Fail("handshake failed: %s" % e)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", default="")
    p.add_argument("--dbname", required=True)
    p.add_argument("--direct", action="store_true", help="ClientHello first, no SSLRequest")
    p.add_argument("--no-alpn", action="store_true", help="offer no ALPN protocol")
    p.add_argument("--ca", help="verify the server's chain and name against this CA")
    p.add_argument("--server-name", default="localhost", help="SNI and the name verified")
    p.add_argument("--cert", help="client certificate")
    p.add_argument("--key", help="client key")
    p.add_argument("--channel-binding", action="store_true", help="require SCRAM-SHA-256-PLUS")
    p.add_argument("--sql", default="SELECT 1")
    p.add_argument("--timeout", type=float, default=10)
    args = p.parse_args()
    try:
        sock = open_tls(args)
        print("tls %s alpn=%s" % (sock.version(), sock.selected_alpn_protocol() or "none"))
        login(sock, args)
        print("row %s" % query(sock, args.sql))
        send_msg(sock, b"X", b"")
        sock.close()
        return 0
    except ServerError as e:
        print("error %s" % e)
        return 1
    except (Fail, OSError, ssl.SSLError) as e:
        print("fail %s" % e)
        return 3


if __name__ == "__main__":
    sys.exit(main())
