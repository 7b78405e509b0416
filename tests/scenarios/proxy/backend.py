"""A backend that is not socket-activated and needs about a second before it listens, as an
application server warming up; then it answers every connection with "backend"."""
import socket
import sys
import time

time.sleep(1)
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen()
while True:
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"backend\n")
