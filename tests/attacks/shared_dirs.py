# attack: leave files in every world-writable directory of the host, for
#   the host or a later task to find
# expect: *=ok
# (what the task could write is its own: no canary may appear on the host)
# canary: /tmp/lattice-attack-shared-{tier}
# canary: /var/tmp/lattice-attack-shared-{tier}
# canary: /dev/shm/lattice-attack-shared-{tier}
def f(x):
    written = []
    for directory in ("/tmp", "/var/tmp", "/dev/shm"):
        try:
            with open(directory + "/lattice-attack-shared-{tier}", "w") as out:
                out.write("escaped")
            written.append(directory)
        except OSError:
            pass
    return written
