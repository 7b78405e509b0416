"""A cold-start guard for ExecStartPre=: returns once something accepts connections on the
port, so that the proxy starts only when its backend is ready."""
import socket
import sys
import time

deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("the backend never listened")
        time.sleep(0.05)
