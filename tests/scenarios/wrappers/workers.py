"""A parent that takes the passed socket and starts workers that inherit it along with
LISTEN_*: the workers accept on it, so the fds are served."""
import os
import subprocess
import sys

if os.environ.get("LISTEN_PID") != str(os.getpid()):
    sys.exit("LISTEN_PID is not this process: not socket-activated")
worker = os.path.join(os.path.dirname(__file__), "worker.py")
children = [
    subprocess.Popen([sys.executable, worker], pass_fds=(3,)) for _ in range(2)
]
for child in children:
    child.wait()
