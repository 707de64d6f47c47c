#!/usr/bin/env python3
"""Opens N idle client connections to a Postgres endpoint (SCRAM-SHA-256 or
trust login, then nothing), reports how many logged in and the RSS of a
process while they are all connected, then closes them.

    idle_clients.py HOST PORT USER DATABASE PASSWORD N PID

Used by benches/pgbench.sh to measure memory per idle client. The SCRAM
salted password is computed once and reused, since the proxy's verifier
(and so its salt) is the same for every login.
"""
import asyncio
import base64
import hashlib
import hmac
import os
import struct
import sys

HOST, PORT, USER, DB, PASSWORD, N, PID = sys.argv[1:8]
PORT, N, PID = int(PORT), int(N), int(PID)
salted_cache = {}


def startup():
    body = struct.pack("!I", 196608)
    for k, v in (("user", USER), ("database", DB)):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def read_msg(reader):
    head = await reader.readexactly(5)
    tag, length = head[:1], struct.unpack("!I", head[1:])[0]
    return tag, await reader.readexactly(length - 4)


def salted(salt, iterations):
    key = (salt, iterations)
    if key not in salted_cache:
        salted_cache[key] = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, iterations)
    return salted_cache[key]


async def login(sem, conns):
    async with sem:
        reader, writer = await asyncio.open_connection(HOST, PORT)
        writer.write(startup())
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = f"n=,r={nonce}"
        while True:
            tag, body = await read_msg(reader)
            if tag == b"R":
                code = struct.unpack("!I", body[:4])[0]
                if code == 10:
                    msg = ("n,," + first_bare).encode()
                    payload = b"SCRAM-SHA-256\0" + struct.pack("!I", len(msg)) + msg
                    writer.write(b"p" + struct.pack("!I", len(payload) + 4) + payload)
                elif code == 11:
                    server_first = body[4:].decode()
                    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
                    sp = salted(base64.b64decode(attrs["s"]), int(attrs["i"]))
                    client_key = hmac.new(sp, b"Client Key", hashlib.sha256).digest()
                    stored = hashlib.sha256(client_key).digest()
                    final_bare = f"c=biws,r={attrs['r']}"
                    auth = f"{first_bare},{server_first},{final_bare}".encode()
                    sig = hmac.new(stored, auth, hashlib.sha256).digest()
                    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
                    msg = f"{final_bare},p={proof}".encode()
                    writer.write(b"p" + struct.pack("!I", len(msg) + 4) + msg)
            elif tag == b"E":
                raise RuntimeError(body.decode(errors="replace"))
            elif tag == b"Z":
                conns.append(writer)
                return


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0


async def main():
    sem = asyncio.Semaphore(200)
    conns = []
    results = await asyncio.gather(*(login(sem, conns) for _ in range(N)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    await asyncio.sleep(2)
    print(f"opened {len(conns)}")
    print(f"rss_kb {rss_kb(PID)}")
    if errors:
        print(f"errors {len(errors)} first: {errors[0]}", file=sys.stderr)
    for w in conns:
        w.close()


asyncio.run(main())
