"""Serves the passed socket when socket-activated, else binds its port itself (the usual
fallback of daemons that support both)."""
import os
import socket
import sys

if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
    listener = socket.socket(fileno=3)
else:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"lonely\n")
