"""eryx (CPython compiled to WASI, in wasmtime): a fresh `eryx.Sandbox()` per
task, whose `execute` hands back the script's `result` variable."""

import contextlib
import json
import re

import eryx

VERSION = eryx.__version__
# The type of the exception a traceback ends with ("ValueError: ...").
RAISED = re.compile(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*)(?::|$)")


@contextlib.contextmanager
def pools(concurrency):
    yield None, None


def source(code):
    return "import json\n" + code + "\n"


def call(pool, source, case):
    argument = json.dumps(json.dumps(case["input"]))
    try:
        run = eryx.Sandbox().execute(source + f"result = f(json.loads({argument}))\n")
    except eryx.ExecutionError as error:
        for line in reversed(str(error).strip().splitlines()):
            raised = RAISED.match(line.strip())
            if raised:
                return ("raised", raised.group(1))
        return ("raised", str(error)[:160])
    if run.result_error:
        raise RuntimeError(run.result_error)
    return ("value", run.result)
