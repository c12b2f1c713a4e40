# attack: connect to the host's unix sockets, by path and abstract, with the network off
# expect: *=ok:[]
# unix-listener: yes
import socket
def f(paths):
    reached = []
    for path in paths:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"stolen")
            reached.append(path if isinstance(path, str) else repr(path))
        except Exception:
            pass
    return reached
