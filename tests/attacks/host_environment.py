# attack: read the host's environment (the test sets LATTICE_ATTACK_SECRET in its own)
# expect: *=ok
# forbid: lattice-env-secret
import os
def f(x):
    return dict(os.environ)
