//! CodeRunner semantics (design.md §4) on real interpreters. Each check is
//! a function of the tier, so every tier that runs Python runs all of them.

use crate::common::*;
use lattice::sandbox::SandboxLevel;
use lattice::task::{TaskError, TaskSubmission};
use serde_json::json;

const TIERS: [SandboxLevel; 5] = [
    SandboxLevel::Wasm,
    SandboxLevel::Subprocess,
    SandboxLevel::None,
    SandboxLevel::Seccomp,
    SandboxLevel::Docker,
];

fn each_tier(check: impl Fn(SandboxLevel)) {
    for level in TIERS {
        check(level);
    }
}

#[test]
fn whole_module_runs_and_the_last_top_level_def_is_called() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let code = "import math\nSCALE = 3\ndef helper(x):\n    return x * SCALE\nclass Box:\n    def get(self):\n        return 1\ndef main(x):\n    def inner():\n        return 0\n    return helper(x) + Box().get() + inner() + int(math.sqrt(16))\n";
        assert_eq!(ok(&run_code(level, code, json!(2))), json!(11), "{level}");
    });
}

#[test]
fn entry_args_and_kwargs() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let code = "def first(a, b=0, *, c=0):\n    return [a, b, c]\ndef second():\n    return 'second'\n";
        let task = TaskSubmission::python(code)
            .with_entry("first")
            .with_args(vec![json!(1), json!(2)])
            .with_kwargs(json!({"c": 3}).as_object().unwrap().clone());
        assert_eq!(ok(&run(level, task)), json!([1, 2, 3]));
        // Neither input nor args: called with no arguments.
        assert_eq!(
            ok(&run(level, TaskSubmission::python(code))),
            json!("second")
        );
        // input null is an argument.
        let task =
            TaskSubmission::python("def f(x):\n    return x is None\n").with_input(json!(null));
        assert_eq!(ok(&run(level, task)), json!(true));
    });
}

#[test]
fn prints_are_captured_apart_from_the_result() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let code = "import sys, os\ndef f(x):\n    print('{\"status\": \"ok\", \"result\": 666}')\n    print('to stderr', file=sys.stderr)\n    os.write(1, b'raw fd write\\n')\n    return x\n";
        let outcome = run_code(level, code, json!("real"));
        assert_eq!(ok(&outcome), json!("real"));
        assert!(
            outcome.stdout.contains("\"result\": 666"),
            "{}",
            outcome.stdout
        );
        // In-process, fd 1 is the host's own stdout: the none tier captures
        // sys.stdout and sys.stderr only (documented; it isolates nothing).
        if level != SandboxLevel::None {
            assert!(outcome.stdout.contains("raw fd write"));
        }
        assert_eq!(outcome.stderr, "to stderr\n");
    });
}

#[test]
fn exceptions_carry_type_message_and_a_traceback_in_user_lines() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let code =
            "class MyError(Exception):\n    pass\n\ndef f(x):\n    raise MyError('bad ' + x)\n";
        let outcome = run_code(level, code, json!("input"));
        match err(&outcome) {
            TaskError::Failed {
                type_name,
                message,
                traceback,
            } => {
                assert_eq!(type_name, "MyError");
                assert_eq!(message, "bad input");
                assert!(traceback.contains("line 5"), "{traceback}");
                assert!(traceback.contains("<task>"), "{traceback}");
                assert!(traceback.contains("raise MyError"), "{traceback}");
            }
            other => panic!("{other:?}"),
        }
        let zero = run_code(level, "def f(x):\n    return 1 / x\n", json!(0));
        assert_eq!(failed_type(&zero), "ZeroDivisionError");
        // Carets under the failing expression, on every tier (CPython 3.11
        // may mark the operator with `~`; RustPython's are plain).
        let TaskError::Failed { traceback, .. } = err(&zero) else {
            unreachable!("failed_type checked it")
        };
        let lines: Vec<&str> = traceback.lines().collect();
        let at = lines
            .iter()
            .position(|line| line.trim() == "return 1 / x")
            .unwrap_or_else(|| panic!("{traceback}"));
        let carets = lines[at + 1];
        assert_eq!(
            carets.trim_start().len(),
            "1 / x".len(),
            "{level}: {traceback}"
        );
        assert!(
            carets.trim().chars().all(|c| c == '^' || c == '~') && carets.contains('^'),
            "{level}: {traceback}"
        );
        assert_eq!(
            carets.find(|c: char| c != ' '),
            lines[at].find('1'),
            "{level}: {traceback}"
        );
        let exit = run_code(level, "import sys\ndef f(x):\n    sys.exit(3)\n", json!(0));
        assert_eq!(failed_type(&exit), "SystemExit");
    });
}

/// Function bodies that fail in the ways tasks commonly do, for the
/// traceback checks below.
const FAILING_BODIES: &[&str] = &[
    "    return 1 / x",
    "    d = {}\n    return d['missing']",
    "    return int('abc')",
    "    y = int('abc')\n    return y",
    "    items = [1, 2]\n    value = items[5] + 1",
    "    return x + 'text'",
    "    raise ValueError('plain')",
    "    return helper(x) + 1",
    "    return [1, 2, 3][1:2][5]",
    "    return -1 ** 0.5 / x",
    "    return 'abc'.index('z')",
    "    assert x == 2, 'nope'",
    "    q = {'a': 1}\n    return q['a'] + q['b']",
    "    import json\n    return json.loads('{bad')",
    "    class Local(Exception):\n        pass\n    raise Local()",
    "    return r\"a\\\"b\"[9]",
    "    return (lambda: 1 / x)()",
    "    return sorted([3, 'a'])",
    "    return {'k': [1]}['k'][3]",
    "    try:\n        1 / x\n    except ZeroDivisionError:\n        raise KeyError('during') from None",
    "    return   abs('x' )  # a comment",
    "    return divmod(1, x) // helper(x)",
    // The caret scanner's tokens: numbers, string prefixes and escapes,
    // operators, unary signs, brackets (guest/src/traceback.rs).
    "    return 0x1F + 1e3 * 2j // x",
    "    return b'a\\'b' + rb\"c\" + 'x'[x:] + [1][x + 1]",
    "    return \"a\\\"b\" 'c' + x",
    "    return (x ** -1)",
    "    return -x ** -1",
    "    return ~x @ x",
    "    return abs(x) - abs(x) / x",
    "    return {1: 2}.get(x) + None",
    "    return x.real / x",
    "    return x[0]",
    "    return divmod(*[1, x])",
    "    return x // 0 if x else 1 // x",
    // What it leaves to the module: an f-string in the segment, a position
    // over two lines, a line that is not ASCII.
    "    return {'a': 1}[f'{x}']",
    "    return (1 +\n            'a')",
    "    return '\u{e9}' + x",
    // Statements around a call, and tabs.
    "    y = helper(x)",
    "    g = lambda: 1 / x\n    return g()",
    "    return helper (x)  ;  # trailing",
    "\treturn 1 / x",
    "    raise ValueError('a') from None",
];

/// `body` as a task: a helper, then `f(x)` with that body.
fn failing_task(body: &str) -> String {
    format!("def helper(x):\n    return 1 / x\n\ndef f(x):\n{body}\n")
}

#[test]
fn tracebacks_are_what_the_traceback_module_writes() {
    let _suite = crate::common::suite(module_path!());
    // The driver formats the common cases itself (the module costs most
    // of a failing task on RustPython); the text must stay the module's:
    // compared here with `traceback.format_exception` run in the same
    // interpreter on the same frames.
    for level in [SandboxLevel::Wasm, SandboxLevel::None] {
        for body in FAILING_BODIES {
            let code = failing_task(body);
            let TaskError::Failed { traceback, .. } = err(&run_code(level, &code, json!(0))) else {
                panic!("{level}: {body}: not a task error")
            };
            let reference = format!(
                "{code}\nimport traceback\n\ndef reference(x):\n    try:\n        f(x)\n    except BaseException as e:\n        return ''.join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))\n"
            );
            assert_eq!(
                json!(traceback),
                ok(&run_code(level, &reference, json!(0))),
                "{level}: {body}"
            );
        }
    }
    // One formatter on every tier: where the interpreters' messages agree,
    // so do the tracebacks, carets included.
    for body in [FAILING_BODIES[0], FAILING_BODIES[1], FAILING_BODIES[7]] {
        let code = failing_task(body);
        let texts: Vec<String> = TIERS
            .iter()
            .map(|&level| match err(&run_code(level, &code, json!(0))) {
                TaskError::Failed { traceback, .. } => traceback,
                other => panic!("{level}: {other:?}"),
            })
            .collect();
        for (level, text) in TIERS.iter().zip(&texts) {
            assert_eq!(text, &texts[0], "{level} against wasm: {body}");
        }
        assert!(texts[0].contains("^"), "{}", texts[0]);
    }
    // The two formatters (driver.py's on CPython, its port in the guest on
    // RustPython) agree on every body, up to the messages, which are the
    // interpreters' own; but for frames of the interpreters' own stdlib and
    // a position over two lines, which each interpreter's traceback module
    // writes in its own way.
    let own_ways = [
        "    import json\n    return json.loads('{bad')",
        "    return (1 +\n            'a')",
    ];
    let mut differ = vec![];
    for body in FAILING_BODIES
        .iter()
        .filter(|body| !own_ways.contains(body))
    {
        let code = failing_task(body);
        let frames = |level| match err(&run_code(level, &code, json!(0))) {
            TaskError::Failed { traceback, .. } => {
                let mut lines: Vec<String> = traceback.lines().map(String::from).collect();
                lines.pop();
                lines
            }
            other => panic!("{level}: {other:?}"),
        };
        let (wasm, cpython) = (frames(SandboxLevel::Wasm), frames(SandboxLevel::Subprocess));
        if wasm != cpython {
            differ.push(format!(
                "{body}\n{}\n--\n{}",
                wasm.join("\n"),
                cpython.join("\n")
            ));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n====\n"));
}

/// The guest's port of the driver's formatter (guest/src/traceback.rs),
/// called directly on the same exceptions as the traceback module: it must
/// write the module's text for every common case, carets and repeated
/// frames included, and leave only what it is not sure of to the module.
#[test]
fn the_guests_traceback_formatter_writes_the_modules_text() {
    let _suite = crate::common::suite(module_path!());
    let mut code =
        String::from("import linecache, sys, traceback\n\ndef helper(x):\n    return 1 / x\n\n");
    for (i, body) in FAILING_BODIES.iter().enumerate() {
        code += &format!("def f{i}(x):\n{body}\n\n");
    }
    code += "def deep(x):\n    return deep(x) + 1\n\n";
    code += "def f(names):
    formatter = sys._getframe(1).f_globals['_native_format_common']
    out = []
    for name in names:
        try:
            globals()[name](0)
        except BaseException as e:
            tb = e.__traceback__.tb_next
            module = ''.join(traceback.format_exception(type(e), e, tb))
            out.append([formatter(e, tb, linecache), module])
    return out
";
    let mut names: Vec<String> = (0..FAILING_BODIES.len()).map(|i| format!("f{i}")).collect();
    names.push("deep".into());
    // A position over two lines and a line that is not ASCII.
    let left_to_the_module = [
        "    return (1 +\n            'a')",
        "    return '\u{e9}' + x",
    ];
    for level in [SandboxLevel::Wasm, SandboxLevel::None] {
        let answer = ok(&run_code(level, &code, json!(names)));
        let pairs = answer.as_array().expect("a list");
        assert_eq!(pairs.len(), names.len(), "{level}: {answer}");
        for (name, pair) in names.iter().zip(pairs) {
            let body = name
                .strip_prefix('f')
                .and_then(|i| i.parse::<usize>().ok())
                .map_or("deep", |i| FAILING_BODIES[i]);
            let module = pair[1].as_str().expect("the module's text");
            if left_to_the_module.contains(&body) {
                assert!(pair[0].is_null(), "{level}: {body}: {}", pair[0]);
                continue;
            }
            assert_eq!(pair[0].as_str(), Some(module), "{level}: {body}");
        }
        let deep = pairs.last().unwrap()[1].as_str().unwrap();
        assert!(deep.contains("more times]\n"), "{level}: {deep}");
        assert!(deep.contains("~~~~^^^\n"), "{level}: {deep}");
    }
}

/// A task that replaces the traceback module's anchor finder (which the
/// formatter asks about segments it can't read) with one giving absurd
/// anchors still fails with its own error and a traceback, not by running
/// its formatter out of memory. (On wasm only: the none tier's modules
/// stay loaded across its tasks, and this one replaces a module function.)
#[test]
fn a_replaced_anchor_finder_cannot_break_the_formatter() {
    let _suite = crate::common::suite(module_path!());
    let code = "import traceback

class Anchors:
    left_end_lineno = right_start_lineno = 0
    left_end_offset = 0
    right_start_offset = 10 ** 15

traceback._extract_caret_anchors_from_line_segment = lambda segment: Anchors()

def f(x):
    return {'a': 1}[f'{x}']
";
    match err(&run_code(SandboxLevel::Wasm, code, json!(0))) {
        TaskError::Failed {
            type_name,
            traceback,
            ..
        } => {
            assert_eq!(type_name, "KeyError");
            assert!(traceback.contains("KeyError"), "{traceback}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_code_is_an_invalid_task_with_the_line() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let syntax = run_code(level, "def f(x):\n    return (\n\ndef g(:\n", json!(1));
        match err(&syntax) {
            TaskError::InvalidTask { type_name, message } => {
                assert_eq!(type_name, "SyntaxError");
                assert!(message.starts_with("line "), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let no_function = run_code(level, "x = 1\n", json!(1));
        assert!(matches!(err(&no_function), TaskError::InvalidTask { .. }));
        let missing = run(
            level,
            TaskSubmission::python("def f(x):\n    return x\n")
                .with_entry("g")
                .with_input(json!(1)),
        );
        match err(&missing) {
            TaskError::InvalidTask { message, .. } => assert!(message.contains("'g'")),
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn results_must_be_json() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        for (code, needle) in [
            ("def f(x):\n    return {1, 2}\n", "not JSON-serialisable"),
            (
                "def f(x):\n    return float('nan')\n",
                "not JSON-serialisable",
            ),
            ("def f(x):\n    return object()\n", "not JSON-serialisable"),
            ("def f(x):\n    return '\\ud800'\n", "lone surrogate"),
        ] {
            match err(&run_code(level, code, json!(1))) {
                TaskError::Failed { message, .. } => assert!(message.contains(needle), "{message}"),
                other => panic!("{other:?}"),
            }
        }
    });
}

#[test]
fn big_integers_and_unicode_round_trip_exactly() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let big = "1267650600228229401496703205376"; // 2**100
        let input: serde_json::Value =
            serde_json::from_str(&format!("[{big}, \"héllo ✓ 𝄞\"]")).unwrap();
        let outcome = run_code(
            level,
            "def f(x):\n    return [x[0] * 2 ** 100, x[0] == 2 ** 100, x[1][::-1]]\n",
            input,
        );
        assert_eq!(
            ok(&outcome).to_string(),
            "[1606938044258990275541962092341162602522202993782792835301376,true,\"𝄞 ✓ olléh\"]"
        );
        // Bigger than CPython's default int/str limit of 4300 digits.
        let outcome = run_code(level, "def f(x):\n    return 7 ** 6000\n", json!(null));
        assert_eq!(ok(&outcome).to_string().len(), 5071);
    });
}

#[test]
fn allowed_imports_admit_only_the_listed_modules() {
    let _suite = crate::common::suite(module_path!());
    each_tier(|level| {
        let task = |code: &str| {
            TaskSubmission::python(code)
                .with_input(json!([1, 2]))
                .with_allowed_imports(["json", "os.path"])
        };
        let fine = run(
            level,
            task("import json\nimport os.path\ndef f(x):\n    return json.dumps(x)\n"),
        );
        assert_eq!(ok(&fine), json!("[1, 2]"));
        let refused = run(level, task("import socket\ndef f(x):\n    return 1\n"));
        match err(&refused) {
            TaskError::Failed {
                type_name, message, ..
            } => {
                assert_eq!(type_name, "ImportError");
                assert!(message.contains("'socket'"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let inside = run(
            level,
            task("def f(x):\n    import subprocess\n    return 1\n"),
        );
        assert_eq!(failed_type(&inside), "ImportError");
        let from = run(
            level,
            task("from os import system\ndef f(x):\n    return 1\n"),
        );
        assert_eq!(failed_type(&from), "ImportError");
    });
}
