"""A server that takes the passed socket only when LISTEN_PID is its own PID, as
sd_listen_fds() does; otherwise it binds its port itself (and fails: systemd holds it)."""
import os
import socket
import sys

port = int(sys.argv[1])
if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS"):
    listener = socket.socket(fileno=3)
else:
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as e:
        sys.exit(f"server: cannot bind port {port}: {e}")
    listener.listen()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"server\n")
