"""A worker: serves fd 3, inherited from its parent (LISTEN_PID names the parent)."""
import socket

listener = socket.socket(fileno=3)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"worker\n")
