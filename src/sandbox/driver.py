"""The lattice CodeRunner driver: runs one task request, returns one envelope.

This one file is the CodeRunner of every tier: CPython runs it in the
subprocess, seccomp and docker tiers (``main_stdio``), RustPython runs it in the
wasm and none tiers (``run_request`` called by the host). It must therefore
stay plain stdlib Python that both interpreters accept.

Request (JSON text): {"code", "entry"?, "input"?, "args"?, "kwargs"?,
"allowed_imports"?}. Answer: ``("ok", result_json)`` or ``(kind, type,
message, traceback)`` with kind ``task_error`` or ``invalid_task`` (RustPython's
host turns it into the envelope itself); on CPython the envelope (JSON text)
{"status": "ok", "result": ...} or {"status": "error", "error": {"kind",
"type", "message", "traceback"}}. The host takes no other kind from here:
limits, cancels and the rest are its own observations. User output is never
part of the answer: prints go to the process's stdout and stderr, the answer
goes back on a channel of its own.
"""

import re
import sys
import types as _types
from itertools import islice as _islice
from json import JSONDecoder as _JSONDecoder, JSONEncoder as _JSONEncoder
from json import dumps as _dumps, loads as _loads
from json.encoder import encode_basestring as _encode_str
from marshal import dumps as _marshal_dumps, loads as _marshal_loads

# What the driver uses after the task's code ran, taken now: the task may
# replace the builtins (it shares them), and the driver must still answer.
_str, _type, _len, _callable, _getattr, _open = str, type, len, callable, getattr, open
_CoroutineType = _types.CoroutineType

TASK_FILENAME = "<task>"

# JSON both ways, built once: an encoder per call (json.dumps with options)
# costs more than a trivial task's own work on RustPython.
_encode = _JSONEncoder(ensure_ascii=False, allow_nan=False).encode
_scan = _JSONDecoder().scan_once
_int_repr, _float_repr = int.__repr__, float.__repr__


def _json_text(value):
    """``value`` as JSON text, as ``json.dumps(value, ensure_ascii=False,
    allow_nan=False)`` gives it; scalars without the encoder's machinery."""
    kind = _type(value)
    if kind is int:
        return _int_repr(value)
    if kind is str:
        return _encode_str(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is float and value - value == 0.0:
        # Finite: inf - inf and nan - nan are nan.
        return _float_repr(value)
    return _encode(value)


def _parse_json(text):
    """``json.loads(text)``; compact text (what the host sends) straight
    through the scanner."""
    try:
        value, end = _scan(text, 0)
        if end == _len(text):
            return value
    except Exception:
        pass
    return _loads(text)

if hasattr(sys, "set_int_max_str_digits"):
    # Integers of any size must round-trip exactly through JSON.
    sys.set_int_max_str_digits(0)


# An error's message and traceback are cut to this many characters, so the
# answer stays small whatever the task raised.
_TEXT_CAP = 65536


def _cut(text):
    if _len(text) > _TEXT_CAP:
        return text[:_TEXT_CAP] + "\n[lattice: cut: %d more characters]" % (_len(text) - _TEXT_CAP)
    return text


def _error(kind, type_name, message, traceback_text=""):
    return (kind, _str(type_name), _cut(_str(message)), _cut(_str(traceback_text)))


def _format_exception(exc):
    """The traceback of ``exc`` from the first frame of the user's code on."""
    tb = exc.__traceback__
    while tb is not None and not _is_user_file(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    try:
        if _native_format_common is not None:
            text = _native_format_common(exc, tb, _linecache[0] if _linecache else None)
        else:
            text = _format_common(exc, tb)
    except Exception:
        text = None
    if text is not None:
        return text
    try:
        import traceback

        return "".join(traceback.format_exception(_type(exc), exc, tb))
    except Exception:
        return "%s: %s" % (_type(exc).__name__, _exception_message(exc))


def _exception_message(exc):
    try:
        return _str(exc)
    except Exception:
        return "<exception message could not be printed>"


def _task_failure(exc):
    return _error("task_error", _type(exc).__name__, _exception_message(exc), _format_exception(exc))


# A traceback as the traceback module writes it, for the common case, at a
# fraction of its cost: on RustPython, `traceback.format_exception` was most
# of what a failing task cost (~0.8 ms of ~1.4). Anything out of the common
# case (chained exceptions, notes, groups, syntax errors, the messages the
# module adds suggestions to, multi-line or non-ASCII positions) goes to the
# module itself, and so does any caret segment the scanner below is not
# sure of. RustPython's guest sets `_native_format_common`, its port of
# `_format_common` to Rust (guest/src/traceback.rs: interpreted, this was
# most of what a raise cost over a return); the CPython tiers run it as
# written here.

_native_format_common = None

_FULL_FORMAT_TYPES = (SyntaxError, ImportError, NameError, AttributeError)
try:
    _FULL_FORMAT_TYPES += (BaseExceptionGroup,)
except NameError:
    pass

# One token of a one-line segment: a whole string literal, a number, a
# name, an operator or a bracket; or (group u) what this scanner does not
# read: f- and t-strings, an unterminated string, a line continuation.
_TOKENS = re.compile(
    r"""(?:[rRbBuU]|[rR][bB]|[bB][rR])?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
    r"""|(?P<u>[fFtT][rR]?['"]|[rR][fFtT]['"]|['"\\#])"""
    r"""|0[xXoObB][\da-fA-F_]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d[\d_]*)?[jJ]?"""
    r"""|[^\W\d]\w*|\*\*|//|<<|>>|<=|>=|==|!=|:=|->|\.\.\.|\S"""
)
_BINARY_PRECEDENCE = {
    "|": 1, "^": 2, "&": 3, "<<": 4, ">>": 4, "+": 5, "-": 5,
    "*": 6, "/": 6, "//": 6, "%": 6, "@": 6, "**": 8,
}
# At the top level of a segment, these make it something without anchors
# (a comparison, a boolean or conditional expression, a tuple, an
# assignment...); a statement keyword can only lead, see _LEADING_KEYWORD.
_NOT_ANCHORED = frozenset(
    ("if", "else", "and", "or", "not", "in", "is", "lambda", "await", "yield", "for", "async",
     "<", ">", "<=", ">=", "==", "!=", ",", ":", ":=", "=", ";", "->")
)
_LEADING_KEYWORD = re.compile(
    r"(?:raise|assert|del|return|import|from|pass|global|nonlocal|break|continue|with|while|for|if"
    r"|elif|else|try|except|finally|def|class|async|await|yield|lambda|not)\b"
)
_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = frozenset(")]}")


class _Unsure(Exception):
    pass


def _top_level_tokens(segment):
    """The tokens of ``segment`` outside brackets, as ``(text, start, opener)``
    (``opener``: where a closing bracket's opener is); openers at the top
    level are tokens too."""
    tokens = []
    openers = []  # the open brackets, innermost last, as (text, start)
    for token in _TOKENS.finditer(segment):
        if token.lastgroup is not None:
            raise _Unsure
        text = token.group()
        if text in _OPENERS:
            if not openers:
                tokens.append((text, token.start(), None))
            openers.append((text, token.start()))
        elif text in _CLOSERS:
            if not openers or _OPENERS[openers[-1][0]] != text:
                raise _Unsure
            opener = openers.pop()[1]
            if not openers:
                tokens.append((text, token.start(), opener))
        elif not openers:
            tokens.append((text, token.start(), None))
    if openers:
        raise _Unsure
    return tokens


def _caret_anchors(segment):
    """Where the traceback module puts ``^`` in a segment: ``(start, end)``
    of the operator of a binary operation, or of the brackets of a call or
    a subscript; None for other expressions. Raises _Unsure when the
    segment is more than this scanner reads."""
    if _LEADING_KEYWORD.match(segment) is not None:
        return None  # a statement (raise, assert...) or a not, lambda, await...
    tokens = _top_level_tokens(segment)
    if not tokens:
        return None
    for text, _, _ in tokens:
        if text in _NOT_ANCHORED:
            return None
    # Binary operators: a + or - after an operand (not after an operator).
    root = None
    operand_before = False
    for text, start, _ in tokens:
        precedence = _BINARY_PRECEDENCE.get(text)
        if precedence is not None and operand_before:
            if root is None or precedence < root[0] or (precedence == root[0] and text != "**"):
                root = (precedence, start, text)
            operand_before = False
        elif text in ("+", "-", "~"):
            if operand_before:
                raise _Unsure
            operand_before = False
        elif text in _OPENERS:
            pass
        else:
            operand_before = True
    first = tokens[0][0]
    if root is not None:
        if first in ("+", "-", "~") and root[2] == "**":
            return None  # -a ** b is the negation of a power
        return (root[1], root[1] + _len(root[2]))
    if first in ("+", "-", "~"):
        return None
    last, start, opener = tokens[-1]
    if last in (")", "]") and opener is not None:
        if opener == tokens[0][1]:
            raise _Unsure  # a parenthesised expression, a list display
        return (opener, _len(segment))  # a call or a subscript
    return None


_ASSIGNED_CALL = re.compile(r"(?:(return)[ \t]+|[^\W\d]\w*[ \t]*=(?!=)[ \t]*)")
_NAME = re.compile(r"[^\W\d]\w*")


def _is_name_call(segment, paren):
    """Whether the call whose arguments open at ``paren`` calls a bare name."""
    name = _NAME.match(segment)
    return name is not None and segment[name.end():paren].strip() == ""


def _module_anchors(segment):
    """The traceback module's own anchors for ``segment`` (it parses it)."""
    try:
        import traceback

        found = traceback._extract_caret_anchors_from_line_segment(segment)
    except Exception:
        return None
    if found is None:
        return None
    if _getattr(found, "left_end_lineno", 0) != 0 or _getattr(found, "right_start_lineno", 0) != 0:
        raise _Unsure
    return (found.left_end_offset, found.right_start_offset)


def _caret_line(line, start, end):
    """The caret line under ``line[start:end]`` (a dedented ASCII line), or None."""
    segment = line[start:end]
    try:
        anchors = _caret_anchors(segment)
    except _Unsure:
        anchors = _module_anchors(segment)
    rest = line[end:].strip()
    lead = _ASSIGNED_CALL.match(line)
    if (
        lead is not None
        and lead.end() == start
        and (not rest or rest[0] in "#;")
        and anchors is not None
        and segment[anchors[0]] == "("
        and (lead.group(1) is None or _is_name_call(segment, anchors[0]))
    ):
        # `return name(...)` and `x = call(...)`: the traceback module
        # shows no carets under a call that is the whole statement.
        return None
    if anchors is None:
        if not line[:start].strip() and not rest:
            return None
        return " " * start + "^" * (end - start)
    left, right = anchors
    return " " * start + "~" * left + "^" * (right - left) + "~" * (end - start - right)


def _position(tb):
    """``(lineno, end_lineno, colno, end_colno)`` of the frame's instruction."""
    if tb.tb_lasti < 0:
        return (tb.tb_lineno, None, None, None)
    position = next(_islice(tb.tb_frame.f_code.co_positions(), tb.tb_lasti // 2, None))
    if position[0] is None:
        return (tb.tb_lineno,) + position[1:]
    return position


def _frame_text(tb, position):
    """One frame's lines, as the traceback module writes them."""
    code = tb.tb_frame.f_code
    filename = code.co_filename
    lineno, end_lineno, colno, end_colno = position
    head = '  File "%s", line %s, in %s\n' % (filename, lineno, code.co_name)
    if _is_user_file(filename):
        lines = _linecache[0].cache.get(filename, (0, 0, ()))[2] if _linecache else ()
        line = lines[lineno - 1] if lineno is not None and 0 < lineno <= _len(lines) else ""
    else:
        if not _linecache:
            raise _Unsure
        _linecache[0].lazycache(filename, tb.tb_frame.f_globals)
        line = _linecache[0].getline(filename, lineno)
        if not line and filename.startswith("<"):
            raise _Unsure
    line = line.rstrip()
    if not line.strip():
        return head
    if colno is None or end_colno is None:
        return head + "    " + line.strip() + "\n"
    if end_lineno != lineno or not line.isascii():
        raise _Unsure
    dedented = line.lstrip(" \t")
    shift = _len(line) - _len(dedented)
    carets = _caret_line(dedented, max(0, colno - shift), max(0, end_colno - shift))
    if carets is None:
        return head + "    " + dedented + "\n"
    return head + "    " + dedented + "\n    " + carets + "\n"


def _format_common(exc, tb):
    """The traceback of ``exc`` from ``tb`` on, or None when it is not a
    common case (see above)."""
    if (
        isinstance(exc, _FULL_FORMAT_TYPES)
        or exc.__cause__ is not None
        or (exc.__context__ is not None and not exc.__suppress_context__)
        or _getattr(exc, "__notes__", None) is not None
        or sys.__dict__.get("tracebacklimit") is not None
    ):
        return None
    kind = _type(exc)
    name = kind.__qualname__
    module = kind.__module__
    if module not in ("__main__", "builtins"):
        name = (module if isinstance(module, str) else "<unknown>") + "." + name
    try:
        message = _str(exc)
    except BaseException:
        message = "<exception str() failed>"
    parts = []
    if tb is not None:
        parts.append("Traceback (most recent call last):\n")
        last = None
        repeats = 0
        try:
            while tb is not None:
                code = tb.tb_frame.f_code
                position = _position(tb)
                key = (code.co_filename, position[0], code.co_name)
                if key != last:
                    if repeats > 3:
                        parts.append(_repeated(repeats - 3))
                    last, repeats = key, 0
                repeats += 1
                if repeats <= 3:
                    parts.append(_frame_text(tb, position))
                tb = tb.tb_next
        except _Unsure:
            return None
        if repeats > 3:
            parts.append(_repeated(repeats - 3))
    parts.append("%s: %s\n" % (name, message) if message else name + "\n")
    return "".join(parts)


def _repeated(count):
    return "  [Previous line repeated %d more time%s]\n" % (count, "s" if count > 1 else "")


# Compiled at import: in the wasm tier that is before the snapshot, so no
# task pays for it.
_TOP_LEVEL_DEF = re.compile(r"^(?:async[ \t]+)?def[ \t]+([^\W\d]\w*)", re.M)


def _entry_name(code):
    """The name of the last top-level function definition, or None.

    A scan for ``def`` at column 0 finds it without building an AST (which
    costs more than a trivial task); ``_check_entry`` confirms it after the
    module ran, and the AST decides when the scan could be fooled.
    """
    last = None
    for last in _TOP_LEVEL_DEF.finditer(code):
        pass
    if last is None:
        return _entry_name_from_ast(code), None
    return last.group(1), code.count("\n", 0, last.start()) + 1


def _entry_name_from_ast(code):
    import ast

    name = None
    for node in ast.parse(code, TASK_FILENAME).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name
    return name


def _check_entry(code, name, line, namespace):
    """``name`` if the scan found the real last top-level def, else the AST's answer."""
    if line is None:
        return name
    function = namespace.get(name)
    function = _getattr(function, "__wrapped__", function)
    body = _getattr(function, "__code__", None)
    if (
        body is not None
        and body.co_filename == TASK_FILENAME
        and _getattr(function, "__qualname__", None) == name
        and body.co_firstlineno <= line
    ):
        return name
    # A "def" inside a string, or a name rebound after its def: ask the AST.
    return _entry_name_from_ast(code)


def _guarded_builtins(allowed):
    """A builtins dict whose ``__import__`` only admits ``allowed`` modules.

    ``allowed`` names top-level modules or dotted submodules: "os" admits
    "os" and "os.path", "os.path" admits only "os.path". Imports made by an
    admitted module itself use the real import machinery, so the stdlib works.
    """
    import builtins

    real_import = builtins.__import__
    allowed = tuple(allowed)

    def admitted(name):
        for module in allowed:
            if name == module or name.startswith(module + "."):
                return True
        return False

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level != 0:
            raise ImportError("relative imports are not allowed in a task", name=name)
        if not admitted(name):
            raise ImportError(
                "import of '%s' is not allowed (allowed_imports: %s)" % (name, ", ".join(allowed) or "none"),
                name=name,
            )
        module = real_import(name, globals, locals, fromlist, level)
        for sub in fromlist or ():
            full = name + "." + sub
            if hasattr(module, sub) and type(getattr(module, sub)) is type(sys) and not admitted(full):
                raise ImportError("import of '%s' is not allowed" % full, name=full)
        return module

    guarded = dict(builtins.__dict__)
    guarded["__import__"] = guarded_import
    return guarded


def _is_user_file(filename):
    return filename == TASK_FILENAME or filename == SCRIPT_FILENAME or filename.startswith("<cell ")


_linecache = []


def _remember_source(code, filename=TASK_FILENAME):
    """Lets tracebacks show the lines of the user's code."""
    try:
        if not _linecache:
            # Imported on first use: a CPython task that never needs it
            # does not pay for it.
            import linecache

            _linecache.append(linecache)
        _linecache[0].cache[filename] = (len(code), None, code.splitlines(True), filename)
    except Exception:
        pass


def _flush_user_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def _awaited(result):
    """The value of a coroutine (an ``async def`` entry), run to its end."""
    if _type(result) is not _CoroutineType:
        return result
    try:
        import asyncio
    except ImportError:
        asyncio = None
    if asyncio is None:
        # No asyncio on this interpreter: a coroutine that never waits on
        # an event loop still runs.
        try:
            while True:
                result.send(None)
        except StopIteration as done:
            return done.value
    if _can_pair_sockets():
        return asyncio.run(result)
    # No socket pair for the event loop's wake-up (WASI, the seccomp tier
    # without network): a loop of timers and tasks only (sleep, gather,
    # wait_for, queues), which is all a task can wait on there.
    loop = _timer_loop(asyncio)
    try:
        return loop.run_until_complete(result)
    finally:
        loop.close()


def _can_pair_sockets():
    try:
        import socket

        ends = socket.socketpair()
    except Exception:
        return False
    for end in ends:
        end.close()
    return True


def _timer_loop(asyncio):
    import time

    class NoIO:
        def select(self, timeout=None):
            if timeout is None:
                raise RuntimeError("the task waits for I/O, which a Wasm task has none of")
            if timeout > 0:
                time.sleep(timeout)
            return []

        def close(self):
            pass

    class TimerLoop(asyncio.BaseEventLoop):
        def __init__(self):
            super().__init__()
            self._selector = NoIO()

        def _process_events(self, event_list):
            pass

        def _write_to_self(self):
            pass

    return TimerLoop()


def _call(function, request):
    """``function`` called as the request says: with ``args``/``kwargs``,
    with ``input``, or with nothing; a coroutine run to its end."""
    if "args" in request or "kwargs" in request:
        result = function(*(request.get("args") or ()), **(request.get("kwargs") or {}))
    elif "input" in request:
        result = function(request["input"])
    else:
        result = function()
    return _awaited(result)


# Host functions: names the host registered, called by the code as
# ordinary functions. A call goes to the host as JSON {"name", "args",
# "kwargs"} through ``_host_transport`` (set by the host on RustPython, by
# ``main_session`` on CPython) and comes back as {"ok": value} or {"error":
# message, "type": exception name}. The host checks every call (the name,
# the limits): nothing here is trusted.


class HostError(Exception):
    """A host function failed; the message is the host's."""


class HostCallLimitError(HostError):
    """This call made more host calls, or moved more bytes, than allowed."""


_HOST_ERRORS = {
    "HostError": HostError,
    "HostCallLimitError": HostCallLimitError,
    "NameError": NameError,
    "TimeoutError": TimeoutError,
}


def _host_transport(request_text):
    return '{"error":"no host functions are registered","type":"NameError"}'


def _host_call(name, args, kwargs):
    try:
        # Built by hand: scalars need no encoder (see _json_text).
        text = (
            '{"name":'
            + _encode_str(name)
            + ',"args":['
            + ",".join([_json_text(arg) for arg in args])
            + '],"kwargs":'
            + (_json_text(kwargs) if kwargs else "{}")
            + "}"
        )
    except (TypeError, ValueError, RecursionError) as exc:
        message = "the arguments of host function %s() are not JSON: %s" % (name, _exception_message(exc))
        raise TypeError(message) from None
    reply = _parse_json(_host_transport(text))
    if "ok" in reply:
        return reply["ok"]
    raise _HOST_ERRORS.get(reply.get("type"), HostError)(reply.get("error"))


def _host_function(name):
    def host_function(*args, **kwargs):
        return _host_call(name, args, kwargs)

    host_function.__name__ = host_function.__qualname__ = name
    host_function.__doc__ = "The host function %s: JSON arguments in, its JSON result back." % name
    return host_function


_HOST_FUNCTION_CODE = _host_function("_").__code__


def _install_host_functions(namespace, names):
    """Defines the host's functions (and their exceptions) in ``namespace``."""
    if not names:
        return
    for name in names:
        if isinstance(name, str) and name.isidentifier():
            namespace[name] = _host_function(name)
    namespace.setdefault("HostError", HostError)
    namespace.setdefault("HostCallLimitError", HostCallLimitError)


# The wasm guest sets these (guest/src/lib.rs): its host keeps the code
# object of a source that runs again and again (by its exact text), and
# the regular expressions that source compiles, and hands them to the later
# tasks with that source, which then skip those compiles. The host takes a
# store only as the first thing an instance does, before any of the task's
# code ran (src/sandbox/wasm/code_cache.rs).
_code_cache_get = _code_cache_put = None
_regex_cache_get = _regex_cache_put = _regex_cache_report = None


def _compile_task(code):
    """``compile(code)`` as the task's module, or the code object the host
    kept from an earlier compile of the very same source (then with the
    source's regexes in ``re``'s cache)."""
    if _code_cache_get is None:
        return compile(code, TASK_FILENAME, "exec")
    kept = _code_cache_get()
    if kept:
        try:
            compiled = _marshal_loads(kept)
        except Exception:
            compiled = None
        if compiled is not None:
            _kept_regexes(_regex_cache_get())
            return compiled
    compiled = compile(code, TASK_FILENAME, "exec")
    if kept == b"":
        # The host wants this compile.
        try:
            if _code_cache_put(_marshal_dumps(compiled)):
                _regex_report[0] = _regex_keys()
        except Exception:
            pass
    return compiled


# The keys of ``re``'s cache before the task's code ran, when the host
# wants to hear which patterns the task compiled; else None.
_regex_report = [None]


def _regex_keys():
    return set(re._cache)


def _kept_regexes(answer):
    """Before any of the task's code runs, what the host said of the
    source's regexes: b"K" and what its patterns compiled to, put into
    ``re``'s cache; b"W" and the patterns an earlier run compiled, to
    compile now and hand over; b"R", to report what the task compiles."""
    if not answer:
        return
    tag, body = answer[:1], answer[1:]
    try:
        if tag == b"K":
            _load_regexes(body)
        elif tag == b"W":
            _regex_cache_put(_compile_regexes(body))
        elif tag == b"R":
            _regex_report[0] = _regex_keys()
    except Exception:
        pass


def _load_regexes(body):
    if not body:
        return
    import _sre
    for key, args in _marshal_loads(body):
        key = (_type(key[0]),) + key
        re._cache[key] = re._cache2[key] = _sre.compile(*args)


def _regex_records(body):
    """The patterns of the host's records: a kind (s: str, b: bytes), the
    flags (i64), the length (u32) and the pattern (str as UTF-8)."""
    at = 0
    while at < _len(body):
        kind = body[at:at + 1]
        flags = int.from_bytes(body[at + 1:at + 9], "little", signed=True)
        size = int.from_bytes(body[at + 9:at + 13], "little")
        data = body[at + 13:at + 13 + size]
        at += 13 + size
        try:
            yield (data.decode("utf-8", "surrogatepass") if kind == b"s" else data), flags
        except UnicodeDecodeError:
            pass


def _compile_regexes(body):
    """Compiles the patterns of ``body`` with ``re`` as the snapshot has it
    (no task code ran yet), leaving them in its cache; returns what each
    handed to ``_sre.compile``. A pattern that warns, prints or fails is
    left to the task, which then meets that itself."""
    import _sre
    import warnings
    compile_pattern, warn = _sre.compile, warnings.warn
    handed, warned = [], []

    def capture(*args):
        handed.append(args)
        return compile_pattern(*args)

    def note(*args, **kwargs):
        # Noted, not issued: the task's own compile issues it (and no
        # registry or filter of ``warnings`` changes here).
        warned.append(args)

    kept = []
    for pattern, flags in _regex_records(body):
        key = (_type(pattern), pattern, flags)
        if flags & re.DEBUG or key in re._cache:
            continue
        del handed[:], warned[:]
        _sre.compile, warnings.warn = capture, note
        try:
            re._compile(pattern, flags)
        except Exception:
            warned.append(None)
        finally:
            _sre.compile, warnings.warn = compile_pattern, warn
        if warned or _len(handed) != 1:
            re._cache.pop(key, None)
            re._cache2.pop(key, None)
            continue
        kept.append((key[1:], handed[0]))
    return _marshal_dumps(kept)


# The host's bounds on a regex report (MAX_PATTERNS and MAX_PATTERN in
# code_cache.rs, whose test holds these to them): it refuses a report beyond.
_MAX_REPORTED_REGEXES = 32
_MAX_REPORTED_PATTERN = 4096


def _report_regexes():
    """Tells the host which patterns the task compiled, when it asked: the
    keys ``re``'s cache gained, as records (see ``_regex_records``)."""
    before = _regex_report[0]
    if before is None:
        return
    _regex_report[0] = None
    records = []
    for key in list(re._cache):
        if _len(records) == _MAX_REPORTED_REGEXES:
            break
        if _type(key) is not tuple or _len(key) != 3:
            continue
        kind, pattern, flags = key
        if (kind is not str and kind is not bytes) or _type(pattern) is not kind:
            continue
        if _type(flags) is not int or not -(1 << 63) <= flags < (1 << 63) or key in before:
            continue
        data = pattern.encode("utf-8", "surrogatepass") if kind is str else pattern
        if _len(data) > _MAX_REPORTED_PATTERN:
            continue
        records.append((b"s" if kind is str else b"b") + flags.to_bytes(8, "little", signed=True)
                       + _len(data).to_bytes(4, "little") + data)
    _regex_cache_report(b"".join(records))


def run_request(request_text):
    """Runs the task described by ``request_text``; returns the answer."""
    try:
        request = _parse_json(request_text)
        op = request.get("op")
        if op is not None:
            return _session_op(op, request)
        code = request["code"]
        if request.get("script"):
            return _run_script(code, request)
    except RecursionError:
        return _error("invalid_task", "ValueError", "the task input is nested too deeply")
    except Exception as exc:
        return _error("invalid_task", type(exc).__name__, "malformed driver request: %s" % _exception_message(exc))

    entry_line = None
    try:
        compiled = _compile_task(code)
        entry = request.get("entry")
        if not entry:
            entry, entry_line = _entry_name(code)
    except SyntaxError as exc:
        return _error(
            "invalid_task",
            type(exc).__name__,
            "line %s: %s" % (exc.lineno, exc.msg),
        )
    except (MemoryError, RecursionError) as exc:
        return _error("invalid_task", type(exc).__name__, "the code is too large or too deeply nested to compile")
    if entry is None:
        return _error("invalid_task", "ValueError", "the code defines no function to call (add a top-level def)")

    _remember_source(code)
    namespace = {"__name__": "__task__"}
    allowed = request.get("allowed_imports")
    if allowed is not None:
        namespace["__builtins__"] = _guarded_builtins(allowed)
    _install_host_functions(namespace, request.get("functions"))

    result = None
    try:
        exec(compiled, namespace)
        entry = _check_entry(code, entry, entry_line, namespace)
        function = namespace.get(entry) if entry else None
        if function is None or not _callable(function):
            return _error(
                "invalid_task",
                "NameError",
                "entry function '%s' is not defined by the code" % entry,
            )
        result = _call(function, request)
        try:
            _report_regexes()
        except Exception:
            pass
    except MemoryError as exc:
        # Drop the frames that hold the big objects before building the reply.
        message = _exception_message(exc)
        exc = None
        namespace.clear()
        return _error("task_error", "MemoryError", message or "out of memory")
    except BaseException as exc:
        return _task_failure(exc)
    finally:
        _flush_user_output()

    namespace.clear()
    return _result_answer(result)


# Script mode: the code is a program, run as ``__main__`` with the request's
# "stdin" as its standard input, as ``python prog.py < stdin`` runs it. Its
# answer is ``{"exit_code": n}``, with the uncaught exception as "error"
# ({"type", "message", "traceback"}) when there was one; the traceback is
# also printed on its stderr as CPython prints it.

SCRIPT_FILENAME = "<script>"

# Set by the CPython entries: fd 0 can carry the script's stdin there
# (``open(0)``, ``os.read(0, n)``); RustPython's tasks read ``sys.stdin``.
_fd0 = {"real": False}


def _run_script(code, request):
    import io

    workdir = _put_files(request.get("files"))
    if _type(workdir) is tuple:
        return workdir  # the files could not be written
    data = _str(request.get("stdin") or "").encode("utf-8", "surrogatepass")
    module = _types.ModuleType("__main__")
    module.__dict__["__file__"] = SCRIPT_FILENAME
    module.__dict__["__builtins__"] = (
        _guarded_builtins(request["allowed_imports"]) if request.get("allowed_imports") is not None else __builtins__
    )
    _install_host_functions(module.__dict__, request.get("functions"))
    saved = (sys.stdin, sys.argv, sys.modules.get("__main__"))
    restore_fd0 = None
    if _fd0["real"]:
        restore_fd0 = _stdin_on_fd0(data)
        stdin = open(0, "r", encoding="utf-8", errors="surrogateescape", newline="\n", closefd=False)
    else:
        stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="surrogateescape", newline="\n")
    sys.stdin, sys.argv, sys.modules["__main__"] = stdin, [SCRIPT_FILENAME], module
    error = None
    try:
        _remember_source(code, SCRIPT_FILENAME)
        exec(compile(code, SCRIPT_FILENAME, "exec"), module.__dict__)
        exit_code = 0
    except SystemExit as exc:
        exit_code = _exit_status(exc.code)
    except MemoryError:
        module.__dict__.clear()
        exit_code, error = 1, ("MemoryError", "out of memory", "")
    except BaseException as exc:
        exit_code = 1
        text = _format_exception(exc)
        error = (_type(exc).__name__, _exception_message(exc), text)
        try:
            sys.stderr.write(text)
        except Exception:
            pass
    finally:
        _flush_user_output()
        sys.stdin, sys.argv = saved[0], saved[1]
        if saved[2] is not None:
            sys.modules["__main__"] = saved[2]
        if restore_fd0 is not None:
            restore_fd0()
        module.__dict__.clear()
    answer = '{"exit_code":' + _int_repr(exit_code)
    fetched = _fetch_files(workdir, request.get("fetch_files"))
    if fetched:
        answer += ',"files":' + _encode(fetched)
    if error is not None:
        type_name, message, text = error
        answer += (
            ',"error":{"type":' + _encode_str(_cut(type_name)) + ',"message":' + _encode_str(_cut(message))
            + ',"traceback":' + _encode_str(_cut(text)) + "}"
        )
    return ("ok", answer + "}")


def _put_files(files):
    """Writes the request's files (path -> base64) into the working
    directory; returns that directory, or the answer saying why not."""
    import os

    try:
        workdir = os.getcwd()
    except Exception:
        workdir = "."
    if not files:
        return workdir
    import base64

    for name, content in files.items():
        path = os.path.join(workdir, name)
        try:
            folder = os.path.dirname(path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            with _open(path, "wb") as handle:
                handle.write(base64.b64decode(content))
        except Exception as exc:
            return _error(
                "invalid_task",
                _type(exc).__name__,
                "can't write the task's file %r in its working directory: %s" % (name, _exception_message(exc)),
            )
    return workdir


def _fetch_files(workdir, names):
    """The files ``names`` (relative to ``workdir``) that exist, path -> base64."""
    if not names:
        return None
    import base64
    import os

    fetched = {}
    for name in names:
        try:
            with _open(os.path.join(workdir, _str(name)), "rb") as handle:
                fetched[_str(name)] = base64.b64encode(handle.read()).decode("ascii")
        except Exception:
            pass  # as SandboxFusion does: a file that isn't there is left out
    return fetched


def _exit_status(code):
    """The process exit status of ``sys.exit(code)``, as CPython makes it
    (a message other than an int is printed on stderr: status 1)."""
    if code is None:
        return 0
    if _type(code) is int or _type(code) is bool:
        return int(code) & 0xFF
    try:
        sys.stderr.write(_str(code) + "\n")
    except Exception:
        pass
    return 1


def _stdin_on_fd0(data):
    """Makes fd 0 read ``data`` then end (a pipe, fed by a thread when it
    holds more than the pipe does); returns what puts fd 0 back."""
    import os

    try:
        saved = os.dup(0)
    except OSError:
        saved = None  # closed (the one-shot entry closes it)
    read_end, write_end = os.pipe()
    if read_end != 0:
        os.dup2(read_end, 0)
        os.close(read_end)

    def feed(rest):
        try:
            while rest:
                rest = rest[os.write(write_end, rest):]
        except OSError:
            pass
        finally:
            os.close(write_end)

    if _len(data) <= 65536:
        feed(data)  # fits in the pipe: no thread
    else:
        import threading

        threading.Thread(target=feed, args=(data,), daemon=True).start()

    def restore():
        # Closing the read end also ends a feeder still blocked (EPIPE).
        if saved is None:
            os.close(0)
        else:
            os.dup2(saved, 0)
            os.close(saved)

    return restore


def _result_answer(result):
    """The answer for a returned value: its JSON text, or why it has none."""
    try:
        text = _json_text(result)
        text.encode("utf-8")
    except RecursionError:
        return _error("task_error", "ValueError", "the result is nested too deeply to serialise as JSON")
    except UnicodeEncodeError:
        return _error("task_error", "ValueError", "the result contains a lone surrogate, which JSON text cannot carry")
    except (TypeError, ValueError) as exc:
        return _error(
            "task_error",
            _type(exc).__name__,
            "the result is not JSON-serialisable: %s" % _exception_message(exc),
        )
    except MemoryError:
        return _error("task_error", "MemoryError", "out of memory while serialising the result")
    return ("ok", text)


# A session: one namespace that lives as long as the interpreter (wasm,
# none) or the process (the CPython tiers) the host keeps for it. Requests
# carry an "op": "exec" runs code REPL-style, "call" calls a function the
# session defined, "split" cuts a script into its top-level statements (the
# REPL's non-interactive input), "reset" forgets the namespace.
_session = {"ns": None, "cells": 0, "allowed": None, "functions": None}


def _session_namespace(request):
    namespace = _session["ns"]
    if namespace is None:
        namespace = _session["ns"] = {"__name__": "__main__"}
        _session["allowed"] = None
        _session["functions"] = None
    # The host's functions as the request names them (a session restored
    # from a snapshot gets the restoring host's).
    functions = request.get("functions")
    if functions != _session["functions"]:
        for name in _session["functions"] or ():
            if _getattr(namespace.get(name), "__code__", None) is _HOST_FUNCTION_CODE:
                del namespace[name]
        _install_host_functions(namespace, functions)
        _session["functions"] = functions
    # The request's import rule holds, also in a session restored from a
    # snapshot made under another one.
    allowed = request.get("allowed_imports")
    if allowed != _session["allowed"]:
        if allowed is None:
            import builtins

            namespace["__builtins__"] = builtins
        else:
            namespace["__builtins__"] = _guarded_builtins(allowed)
        _session["allowed"] = allowed
    return namespace


def _session_op(op, request):
    if op == "exec":
        return _session_exec(request["code"], _session_namespace(request))
    if op == "call":
        return _session_call(request, _session_namespace(request))
    if op == "split":
        return _session_split(request["code"])
    if op == "reset":
        _session["ns"] = None
        return ("ok", "null")
    return _error("invalid_task", "ValueError", "unknown session operation %r" % (op,))


def _session_exec(code, namespace):
    """Runs ``code`` in the session; the value of a final expression is the result."""
    _session["cells"] += 1
    filename = "<cell %d>" % _session["cells"]
    try:
        try:
            # One expression (the common REPL line): no AST to build.
            body, final = None, compile(code, filename, "eval")
        except SyntaxError:
            import ast

            tree = ast.parse(code, filename)
            last = None
            if tree.body and _type(tree.body[-1]) is ast.Expr:
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, filename, "exec")
            final = compile(last, filename, "eval") if last is not None else None
    except SyntaxError as exc:
        return _error("invalid_task", _type(exc).__name__, "line %s: %s" % (exc.lineno, exc.msg))
    except (MemoryError, RecursionError) as exc:
        return _error("invalid_task", _type(exc).__name__, "the code is too large or too deeply nested to compile")
    _remember_source(code, filename)

    def run():
        if body is not None:
            exec(body, namespace)
        if final is not None:
            return _awaited(eval(final, namespace))

    value, failure = _user_code(run)
    if failure is not None:
        return failure
    if final is None:
        return ("ok", '{"value":null,"repr":null}')
    if value is not None:
        namespace["_"] = value
    try:
        shown = _cut(repr(value))
    except BaseException as exc:
        return _task_failure(exc)
    try:
        text = _json_text(value)
        text.encode("utf-8")
    except BaseException:
        text = "null"
    return ("ok", '{"value":' + text + ',"repr":' + _encode_str(shown) + "}")


def _session_call(request, namespace):
    entry = request.get("entry")
    function = namespace.get(entry) if isinstance(entry, str) else None
    if function is None or not _callable(function):
        return _error("invalid_task", "NameError", "the session defines no function '%s'" % (entry,))
    result, failure = _user_code(lambda: _call(function, request))
    if failure is not None:
        return failure
    return _result_answer(result)


def _user_code(work):
    """Runs ``work`` (the user's code) in a session: ``(value, None)``, or
    ``(None, answer)`` for the exception it raised. Its output is flushed."""
    try:
        return work(), None
    except MemoryError:
        return None, _error("task_error", "MemoryError", "out of memory")
    except BaseException as exc:
        return None, _task_failure(exc)
    finally:
        _flush_user_output()


def _session_split(code):
    """The top-level statements of ``code`` as a JSON list of source texts.

    When the code does not parse, the statements before the error, then
    the rest as one piece (whose exec reports the syntax error).
    """
    import ast

    lines = code.splitlines(True)
    end = _len(lines)
    while True:
        try:
            tree = ast.parse("".join(lines[:end]), "<input>")
            break
        except SyntaxError as exc:
            stop = min((exc.lineno or 1) - 1, end - 1)
            # Back to the start of the top-level statement holding the error.
            while stop > 0 and (not lines[stop].strip() or lines[stop][:1] in " \t#"):
                stop -= 1
            end = stop
            if end <= 0:
                tree = None
                break
    pieces = []
    if tree is not None:
        starts = [node.lineno - 1 for node in tree.body]
        # Decorators belong to their definition.
        for index, node in enumerate(tree.body):
            for decorator in _getattr(node, "decorator_list", ()) or ():
                starts[index] = min(starts[index], decorator.lineno - 1)
        for index, start in enumerate(starts):
            stop = starts[index + 1] if index + 1 < _len(starts) else end
            pieces.append("".join(lines[start:stop]))
    if end < _len(lines):
        rest = "".join(lines[end:])
        if rest.strip():
            pieces.append(rest)
    return ("ok", _dumps(pieces, ensure_ascii=False))


def envelope(answer):
    """The envelope text of an answer of ``run_request``."""
    if answer[0] == "ok":
        return '{"status":"ok","result":' + answer[1] + "}"
    kind, type_name, message, traceback_text = answer
    return _dumps(
        {
            "status": "error",
            "error": {"kind": kind, "type": type_name, "message": message, "traceback": traceback_text},
        }
    )


def main_stdio():
    """CPython entry: request on stdin, user output on fds 1/2, envelope on fd 3.

    Where there is no fd 3 (a container's attached streams), the host runs
    the driver with ``--mark-on-stdin`` and sends a mark line before the
    request: the envelope then follows that line on stdout, after the
    user's output (the host splits at the last mark).
    """
    import os

    _fd0["real"] = True
    pid = os.getpid()
    mark = None
    if "--mark-on-stdin" in sys.argv:
        mark = sys.stdin.buffer.readline().decode("ascii").strip()
    # Our own copy of stdout for the envelope: the task may close fd 1.
    envelope_fd = 3 if mark is None else os.dup(1)
    request_text = sys.stdin.buffer.read().decode("utf-8")
    try:
        sys.stdin.close()
    except Exception:
        pass
    answer = envelope(run_request(request_text)).encode("utf-8")
    if os.getpid() != pid:
        # A process the task forked returned through the driver: only the
        # task's own process answers.
        os._exit(0)
    if mark is not None:
        answer = b"\n" + mark.encode("ascii") + b"\n" + answer
    while answer:
        written = os.write(envelope_fd, answer)
        answer = answer[written:]


def main_session():
    """CPython entry of a session (``--session``): one request after another.

    The host sends frames on stdin, ``<nonce> <length>\\n<request>``; for
    each, the driver answers on fd 3 with ``<nonce> <length>\\n<envelope>``
    after writing ``\\x1elattice-<nonce>\\x1e`` to stdout and stderr, which
    tells the host where the call's output ends. The host stops a call with
    SIGINT: ``KeyboardInterrupt`` in the code, never in the driver between
    calls. The task gets an empty stdin; the frames come on a copy of fd 0.
    With ``--answer-on-stdout`` (a container's attached streams, no fd 3)
    the answer frame follows the mark on stdout.

    Before its answer, a call may make host calls: ``<nonce> call <seq>
    <length>\\n<request>`` on the answer channel (after a mark, with
    ``--answer-on-stdout``), each answered on stdin with ``<nonce> reply
    <seq> <length>\\n<reply>``.
    """
    import os
    import signal

    answer_on_stdout = "--answer-on-stdout" in sys.argv
    _fd0["real"] = True
    pid = os.getpid()
    frames = os.fdopen(os.dup(0), "rb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull)
    # Our own copies: the task may close or redirect fds 1 and 2.
    out_fd, err_fd = os.dup(1), os.dup(2)
    in_call = [False]

    def stop(signum, frame):
        if in_call[0]:
            raise KeyboardInterrupt("lattice: the call was stopped")

    signal.signal(signal.SIGINT, stop)

    def read_exactly(size):
        data = b""
        while len(data) < size:
            chunk = frames.read(size - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def write_all(fd, data):
        while data:
            data = data[os.write(fd, data):]

    def read_header():
        header = b""
        while not header.endswith(b"\n"):
            byte = frames.read(1)
            if not byte:
                raise EOFError
            header += byte
        return header.split()

    # The call being served, and its host calls so far.
    current = {"nonce": b"", "seq": 0}

    def host_transport(request_text):
        """A host call on the answer channel; its reply comes on stdin."""
        current["seq"] += 1
        seq, nonce = current["seq"], current["nonce"]
        body = request_text.encode("utf-8", "surrogatepass")
        frame = nonce + b" call %d %d\n" % (seq, len(body)) + body
        # A stop (SIGINT) waits until the reply is read: the frames stay in step.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            if answer_on_stdout:
                _flush_user_output()
                write_all(out_fd, b"\x1elattice-" + nonce + b"\x1e" + frame)
            else:
                write_all(3, frame)
            while True:
                fields = read_header()
                if len(fields) != 4 or fields[0] != nonce or fields[1] != b"reply":
                    raise RuntimeError("lattice: the host's channel is out of step")
                reply = read_exactly(int(fields[3]))
                if int(fields[2]) == seq:
                    return reply.decode("utf-8", "surrogatepass")
                # A reply to a call the driver did not make: not ours.
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    global _host_transport
    _host_transport = host_transport

    while True:
        try:
            fields = read_header()
        except EOFError:
            return
        if len(fields) == 4 and fields[1] == b"reply":
            # A reply to a call the driver did not make (the code wrote one
            # on the channel itself): skipped.
            read_exactly(int(fields[3]))
            continue
        nonce, size = fields
        current["nonce"], current["seq"] = nonce, 0
        request = read_exactly(int(size)).decode("utf-8", "surrogatepass")
        in_call[0] = True
        try:
            answer = run_request(request)
        except BaseException as exc:
            answer = _task_failure(exc)
        finally:
            in_call[0] = False
        if os.getpid() != pid:
            # A process the task forked returned through the driver.
            os._exit(0)
        data = envelope(answer).encode("utf-8", "surrogatepass")
        _flush_user_output()
        mark = b"\x1elattice-" + nonce + b"\x1e"
        frame = nonce + b" %d\n" % len(data) + data
        for fd in (out_fd, err_fd):
            try:
                write_all(fd, mark + frame if fd == out_fd and answer_on_stdout else mark)
            except OSError:
                pass
        if not answer_on_stdout:
            write_all(3, frame)


if __name__ == "__main__":
    if "--session" in sys.argv:
        main_session()
    else:
        main_stdio()
