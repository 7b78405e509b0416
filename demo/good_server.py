"""A socket-activated echo service done right: it serves the socket in fd 3."""
import os
import socket
import sys

SD_LISTEN_FDS_START = 3

if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
    sys.exit("not socket-activated: run me under systemd-socket-activate")
listener = socket.socket(fileno=SD_LISTEN_FDS_START)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"good: served on the passed socket\n")
