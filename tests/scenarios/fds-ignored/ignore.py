"""Closes the socket systemd passes in fd 3 and serves on a port of its own instead."""
import os
import socket
import sys

os.close(3)
own = socket.socket()
own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
own.bind(("127.0.0.1", int(sys.argv[1])))
own.listen()
while True:
    conn, _ = own.accept()
    with conn:
        conn.sendall(b"elsewhere\n")
