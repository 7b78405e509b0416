"""Serves every socket systemd passes, answering with the socket's LISTEN_FDNAMES name."""
import os
import selectors
import socket
import sys

SD_LISTEN_FDS_START = 3

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID is not this process: not socket-activated")
count = int(os.environ.get("LISTEN_FDS", "0"))
names = os.environ.get("LISTEN_FDNAMES", "").split(":")
sel = selectors.DefaultSelector()
for i in range(count):
    listener = socket.socket(fileno=SD_LISTEN_FDS_START + i)
    sel.register(listener, selectors.EVENT_READ, names[i] if i < len(names) else str(i))
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        with conn:
            conn.sendall(key.data.encode() + b"\n")
