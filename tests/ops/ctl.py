#!/usr/bin/python3
"""Send one JSON request to blkgw's control socket and print the reply.

usage: ctl.py SOCKET '{"command": "status"}'
Exits 0 when the reply says ok, 1 otherwise (the reply is printed either way).
"""
import json
import socket
import sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(300)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(buf.decode().strip())
sys.exit(0 if json.loads(buf).get("ok") else 1)
