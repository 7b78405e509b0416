"""Calls shutdown() on the listener systemd passed it, as a server's cleanup code might."""
import socket
import time

listener = socket.socket(fileno=3)
listener.shutdown(socket.SHUT_RDWR)
time.sleep(3600)
