"""An Accept=yes instance: the connection is fd 3 (LISTEN_FDS=1, LISTEN_FDNAMES=connection)."""
import os
import socket

assert os.environ.get("LISTEN_FDNAMES") == "connection"
conn = socket.socket(fileno=3)
conn.sendall(b"hello\n")
conn.close()
