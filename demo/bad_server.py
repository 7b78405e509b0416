"""A socket-activated service that ignores the passed socket and binds its port itself."""
import socket
import sys

port = int(sys.argv[1])
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError as e:
    print(f"bad: bind failed: {e}", file=sys.stderr)
    sys.exit(1)
s.listen()
while True:
    conn, _ = s.accept()
    conn.sendall(b"bad: served on my own socket\n")
    conn.close()
