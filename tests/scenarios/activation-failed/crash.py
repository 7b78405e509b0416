"""Fails at start, before it looks at the passed socket, as a bad configuration would."""
import sys

sys.exit("crasher: /etc/crasher.conf: no such file")
