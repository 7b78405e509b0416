"""Dies at start, before it looks at the passed socket, as a missing dependency would."""
import sys

sys.exit("dying: cannot load /etc/dying.conf")
