"""Ignores fd 3 and makes a listener of its own on the same address: with SO_REUSEPORT for a
TCP port (a second listener), or by unlinking a unix socket path and binding it again."""
import os
import socket
import sys

kind, where = sys.argv[1], sys.argv[2]
if kind == "tcp":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", int(where)))
else:
    os.unlink(where)
    s = socket.socket(socket.AF_UNIX)
    s.bind(where)
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(b"mine\n")
    conn.close()
