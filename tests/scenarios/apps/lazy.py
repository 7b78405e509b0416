"""Serves the passed socket after a slow start: two seconds of initialisation before its first
accept, as an application loading its data. Then it answers every connection with "lazy"."""
import socket
import time

listener = socket.socket(fileno=3)
time.sleep(2)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"lazy\n")
