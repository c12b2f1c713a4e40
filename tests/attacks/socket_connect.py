# attack: connect to a listener the host opened on 127.0.0.1 (the port is the input) and send data
# expect: wasm=task_error subprocess=task_error seccomp=task_error docker=task_error
# listener: must stay silent
import socket
def f(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2)
    s.sendall(b"stolen")
    return "sent"
