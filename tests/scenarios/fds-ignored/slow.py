"""Serves the passed socket, one connection at a time, slowly: a connection waits in the queue
while the one before it is served. Busy, not ignoring its fds."""
import socket
import time

listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    with conn:
        time.sleep(4)
        conn.sendall(b"slow\n")
