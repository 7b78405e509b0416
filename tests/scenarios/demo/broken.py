"""Ignores the socket systemd passes in fd 3 and binds the port itself: EADDRINUSE."""
import socket
import sys

s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(b"broken\n")
    conn.close()
