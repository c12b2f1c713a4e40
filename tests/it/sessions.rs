//! Sessions: state across calls, REPL values, calls, limits and what they
//! leave of the session, close, idle timeout, the open-session cap, use
//! from two threads; the `repl` command. Every test runs on each tier that
//! has sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lattice::sandbox::{SandboxConfig, SandboxLevel};
use lattice::session::{self, Call, Session, SessionState};
use lattice::task::{ErrorKind, TaskError};
use serde_json::{json, Value};

/// Every tier has sessions.
use crate::common::{reply_value as value, session_config as config, ALL_TIERS as TIERS};

/// The cap test changes a process-wide setting: the tests of this suite
/// take turns.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn open(level: SandboxLevel) -> Session {
    Session::open(config(level)).unwrap_or_else(|e| panic!("{level}: {e}"))
}

#[test]
fn state_lives_across_execs_and_the_last_expression_is_the_value() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = open(level);
        let reply = session.exec("x = 41\nimport math");
        assert_eq!(value(&reply), Value::Null, "{level}");
        assert_eq!(reply.repr, None, "{level}: no final expression, no repr");
        assert_eq!(reply.state, SessionState::Ready);
        let reply = session.exec("print('hi')\nx + 1");
        assert_eq!(value(&reply), json!(42), "{level}");
        assert_eq!(reply.repr.as_deref(), Some("42"));
        assert_eq!(reply.stdout, "hi\n", "{level}: this call's output only");
        let reply = session.exec("math.floor(2.5), {'k': [1, None]}");
        assert_eq!(value(&reply), json!([2, {"k": [1, null]}]), "{level}");
        assert_eq!(reply.repr.as_deref(), Some("(2, {'k': [1, None]})"));
        // A value without a JSON form: null, and its repr.
        let reply = session.exec("class P:\n    def __repr__(self):\n        return 'P!'\nP()");
        assert_eq!(value(&reply), Value::Null, "{level}");
        assert_eq!(reply.repr.as_deref(), Some("P!"));
        // `_` is the last value, as in Python's REPL.
        assert_eq!(value(&session.exec("_")), Value::Null);
        assert_eq!(session.exec("_").repr.as_deref(), Some("P!"), "{level}");
        assert!(session.exec("print(1)").stdout == "1\n");
        assert_eq!(session.exec("print(1)").repr.as_deref(), Some("None"));
    }
}

#[test]
fn functions_defined_earlier_are_called_with_json() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = open(level);
        value(&session.exec(
            "calls = []\ndef add(a, b=0, *, scale=1):\n    calls.append(a)\n    return (a + b) * scale\ndef total(xs):\n    return sum(xs)\nasync def later(x):\n    return x * 2",
        ));
        let reply = session.call(
            "add",
            Call::args(vec![json!(2), json!(3)])
                .with_kwargs(json!({"scale": 10}).as_object().unwrap().clone()),
        );
        assert_eq!(value(&reply), json!(50), "{level}");
        assert_eq!(
            value(&session.call("total", Call::input(json!([1, 2, 3])))),
            json!(6)
        );
        assert_eq!(
            value(&session.call("later", Call::args(vec![json!(21)]))),
            json!(42)
        );
        assert_eq!(
            value(&session.exec("calls")),
            json!([2]),
            "{level}: the call changed state"
        );
        // Undefined or not callable: invalid_task, the session goes on.
        for name in ["nope", "calls"] {
            let reply = session.call(name, Call::none());
            let error = reply.result.unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidTask, "{level}: {error}");
            assert_eq!(reply.state, SessionState::Ready);
        }
        // A result with no JSON form is a task error.
        value(&session.exec("def odd():\n    return {1, 2}"));
        let error = session.call("odd", Call::none()).result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::TaskError, "{level}: {error}");
    }
}

#[test]
fn errors_are_task_error_kinds_and_the_session_goes_on() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = open(level);
        value(&session.exec("n = 1"));
        let reply = session.exec("n = 2\nprint('before')\n1 / 0");
        match &reply.result {
            Err(TaskError::Failed {
                type_name,
                traceback,
                ..
            }) => {
                assert_eq!(type_name, "ZeroDivisionError", "{level}");
                assert!(traceback.contains("1 / 0"), "{level}: {traceback}");
                assert!(
                    !traceback.contains("lattice_driver"),
                    "{level}: {traceback}"
                );
            }
            other => panic!("{level}: {other:?}"),
        }
        assert_eq!(reply.stdout, "before\n");
        assert_eq!(reply.state, SessionState::Ready);
        assert_eq!(
            value(&session.exec("n")),
            json!(2),
            "{level}: what ran before the error stays"
        );
        let reply = session.exec("def broken(:\n    pass");
        let error = reply.result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{level}: {error}");
        assert!(
            error.to_string().contains("SyntaxError")
                || matches!(&error, TaskError::InvalidTask { type_name, .. } if type_name == "SyntaxError"),
            "{error:?}"
        );
        assert_eq!(
            value(&session.exec("n")),
            json!(2),
            "{level}: a syntax error runs nothing"
        );
    }
}

#[test]
fn a_time_limit_interrupts_or_closes_and_says_which() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = Session::open(SandboxConfig {
            timeout: Duration::from_millis(500),
            ..config(level)
        })
        .unwrap();
        value(&session.exec("done = 0"));
        let reply = session.exec("for i in range(10):\n    done = i\nwhile True:\n    pass");
        let error = reply.result.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Timeout, "{level}: {error}");
        // KeyboardInterrupt in the code: the state as the limit left it,
        // and the session goes on.
        assert_eq!(reply.state, SessionState::Interrupted, "{level}");
        assert_eq!(value(&session.exec("done")), json!(9), "{level}");
        assert!(session.is_open());
        // Also from a sleep (a blocking call).
        let reply = session.exec("import time\ndone = 'slept'\ntime.sleep(60)");
        assert_eq!(
            reply.result.unwrap_err().kind(),
            ErrorKind::Timeout,
            "{level}"
        );
        assert_eq!(reply.state, SessionState::Interrupted, "{level}");
        assert_eq!(value(&session.exec("done")), json!("slept"), "{level}");
        // Code that swallows the interrupt can't go on: the session is
        // closed, and says so.
        let reply = session.exec("while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass");
        assert_eq!(
            reply.result.unwrap_err().kind(),
            ErrorKind::Timeout,
            "{level}"
        );
        assert_eq!(reply.state, SessionState::Closed, "{level}");
        assert!(!session.is_open(), "{level}");
        let reply = session.exec("1");
        assert!(
            matches!(&reply.result, Err(TaskError::InvalidTask { type_name, .. }) if type_name == "SessionClosed"),
            "{level}: {:?}",
            reply.result
        );
        assert_eq!(reply.state, SessionState::Closed);
    }
}

#[test]
fn a_cancel_stops_the_call() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = open(level);
        let (cancel, canceller) = crate::common::cancel_after(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let reply =
            session.exec_cancellable("import time\nwhile True:\n    time.sleep(0.01)", &cancel);
        canceller.join().unwrap();
        assert_eq!(reply.result.unwrap_err(), TaskError::Cancelled, "{level}");
        assert!(started.elapsed() < Duration::from_secs(5), "{level}");
    }
}

#[test]
fn memory_is_capped_over_the_sessions_life() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The wasm tier caps memory (the none tier runs trusted code uncapped).
    let session = Session::open(SandboxConfig {
        max_memory_mb: 96,
        ..config(SandboxLevel::Wasm)
    })
    .unwrap();
    value(&session.exec("keep = []"));
    // Each call stays small; together they pass the cap.
    let mut hit = None;
    for _ in 0..40 {
        let reply = session.exec("keep.append(bytearray(8 << 20))\nlen(keep)");
        if reply.result.is_err() {
            hit = Some(reply);
            break;
        }
    }
    let reply = hit.expect("the session's memory was never capped");
    let error = reply.result.unwrap_err();
    assert_eq!(error.kind(), ErrorKind::MemoryLimit, "{error}");
    assert_eq!(reply.state, SessionState::Interrupted);
    // Usable again once it lets go.
    let n = value(&session.exec("n = len(keep)\nkeep.clear()\nn"));
    assert!(n.as_u64().unwrap() >= 5, "{n}");
    assert_eq!(value(&session.exec("len(keep)")), json!(0));
}

#[test]
fn allowed_imports_hold_in_a_session() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = Session::open(SandboxConfig {
            allowed_imports: Some(vec!["math".into()]),
            ..config(level)
        })
        .unwrap();
        assert_eq!(
            value(&session.exec("import math\nmath.isqrt(17)")),
            json!(4)
        );
        let reply = session.exec("import os");
        assert!(
            matches!(&reply.result, Err(TaskError::Failed { type_name, .. }) if type_name == "ImportError"),
            "{level}: {:?}",
            reply.result
        );
        // Nor through a function defined in the session.
        value(&session.exec("def sneaky():\n    return __import__('os').getcwd()"));
        assert!(
            session.call("sneaky", Call::none()).result.is_err(),
            "{level}"
        );
    }
}

#[test]
fn closing_frees_the_session_and_later_calls_fail() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let before = session::open_sessions();
        let session = open(level);
        assert_eq!(session::open_sessions(), before + 1);
        value(&session.exec("secret = 'kept'"));
        session.close();
        assert!(!session.is_open());
        assert_eq!(session::open_sessions(), before, "{level}");
        let reply = session.exec("secret");
        assert_eq!(reply.state, SessionState::Closed);
        assert!(reply.result.is_err());
        session.close();
        // A new session sees nothing of the old one (on the none tier it
        // may get the same Python thread back).
        let fresh = open(level);
        let reply = fresh.exec("secret");
        assert!(
            matches!(&reply.result, Err(TaskError::Failed { type_name, .. }) if type_name == "NameError"),
            "{level}: {:?}",
            reply.result
        );
    }
    // Many sessions opened and closed in turn: nothing piles up (the wasm
    // tier's instance slots are given back).
    for _ in 0..300 {
        let session = open(SandboxLevel::Wasm);
        value(&session.exec("1"));
    }
}

#[test]
fn an_idle_session_closes_itself() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session =
            Session::open_with_idle_timeout(config(level), Duration::from_millis(400)).unwrap();
        value(&session.exec("x = 1"));
        // In use: not idle.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            value(&session.exec("x"));
        }
        std::thread::sleep(Duration::from_millis(1200));
        assert!(!session.is_open(), "{level}");
        assert_eq!(session.exec("x").state, SessionState::Closed);
    }
}

#[test]
fn the_open_sessions_cap_holds() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    /// Puts the cap back, also when the test fails midway (the suite's
    /// other tests open sessions too).
    struct RestoreCap(usize);
    impl Drop for RestoreCap {
        fn drop(&mut self) {
            session::set_max_sessions(self.0);
        }
    }
    let _restore = RestoreCap(session::max_sessions());
    session::set_max_sessions(session::open_sessions() + 2);
    let first = open(SandboxLevel::Wasm);
    let second = open(SandboxLevel::None);
    let refused = Session::open(config(SandboxLevel::Wasm)).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::SandboxUnavailable, "{refused}");
    drop(first);
    let third = open(SandboxLevel::Wasm);
    drop((second, third));
}

#[test]
fn a_session_used_from_two_threads_takes_turns() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in TIERS {
        let session = Arc::new(open(level));
        value(&session.exec("count = 0\ndef bump():\n    global count\n    c = count\n    count = c + 1\n    return count"));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let session = session.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        value(&session.call("bump", Call::none()));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(value(&session.exec("count")), json!(100), "{level}");
    }
}

#[test]
fn the_repl_command_runs_a_script_statement_by_statement() {
    let _suite = crate::common::suite(module_path!());
    let script = "x = 2\n\ndef sq(n):\n    # a comment\n\n    return n * n\n\nprint('out')\nsq(x) + 1\n1 / 0\n@staticmethod\ndef deco():\n    pass\nx\n";
    for tier in ["wasm", "none"] {
        let out =
            crate::common::cli_within(&["repl", "--tier", tier], script, Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(
            lines.len(),
            7,
            "{tier}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(lines[0]["status"], "ok");
        assert_eq!(lines[2]["stdout"], "out\n");
        assert_eq!(lines[3]["value"], 5);
        assert_eq!(lines[3]["repr"], "5");
        assert_eq!(lines[4]["status"], "error");
        assert_eq!(lines[4]["error"]["type"], "ZeroDivisionError");
        assert_eq!(
            lines[5]["status"], "ok",
            "{tier}: a decorated def is one statement"
        );
        assert_eq!(lines[6]["value"], 2, "{tier}: state after an error");
        assert_eq!(lines[6]["session"], "ready");
        assert_eq!(out.status.code(), Some(1), "{tier}: a statement failed");
        // A syntax error: the statements before it run, then the error.
        let out = crate::common::cli_within(
            &["repl", "--tier", tier],
            "y = 3\nprint(y)\ndef (:\n",
            Duration::from_secs(120),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{tier}: {stdout}");
        assert_eq!(lines[1]["stdout"], "3\n");
        assert_eq!(lines[2]["error"]["kind"], "invalid_task");
    }
    let out = crate::common::cli_within(&["repl"], "1 + 1\n", Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0));
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["value"], 2, "the default tier (wasm)");
}

/// The task temp dirs of this process.
fn our_temp_dirs() -> usize {
    let prefix = format!("lattice-task-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .count()
}

#[test]
fn nothing_of_a_session_outlives_it() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let where_am_i = "import os\nprint('pid:', os.getpid(), os.readlink('/proc/self/ns/pid'))";
    for level in [
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ] {
        let dirs = our_temp_dirs();
        // Opened on a thread that ends at once, used from this one: the
        // session's process must not die with the thread that started it.
        let session = std::thread::spawn(move || open(level)).join().unwrap();
        let reply = session.exec(where_am_i);
        let processes = crate::common::pids_in(&reply.stdout);
        assert_eq!(processes.len(), 1, "{level}: {reply:?}");
        if level != SandboxLevel::Seccomp {
            // A process the session started lives between calls, and goes with it.
            value(&session.exec("import subprocess, sys\nkid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])"));
            assert_eq!(value(&session.exec("kid.poll()")), Value::Null, "{level}");
        }
        session.close();
        assert!(
            crate::common::gone(&processes[0]),
            "{level}: {} outlived the session",
            processes[0]
        );
        assert_eq!(
            our_temp_dirs(),
            dirs,
            "{level}: the session's temp dir is removed"
        );
        if level == SandboxLevel::Docker {
            assert_eq!(crate::common::our_containers(), Vec::<String>::new());
        }
    }
    // A session closed by a call it could not survive leaves nothing either.
    for level in [SandboxLevel::Subprocess, SandboxLevel::Docker] {
        let session = Session::open(SandboxConfig {
            timeout: Duration::from_millis(500),
            ..config(level)
        })
        .unwrap();
        let processes = crate::common::pids_in(&session.exec(where_am_i).stdout);
        let reply = session.exec(
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass",
        );
        assert_eq!(reply.state, SessionState::Closed, "{level}: {reply:?}");
        assert_eq!(reply.result.unwrap_err().kind(), ErrorKind::Timeout);
        assert!(crate::common::gone(&processes[0]), "{level}");
        if level == SandboxLevel::Docker {
            assert_eq!(crate::common::our_containers(), Vec::<String>::new());
        }
    }
}

#[test]
fn a_process_session_that_dies_is_closed_and_says_why() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in [
        SandboxLevel::Subprocess,
        SandboxLevel::Seccomp,
        SandboxLevel::Docker,
    ] {
        let session = open(level);
        value(&session.exec("x = 1"));
        let reply = session.exec("import os\nos._exit(3)");
        assert_eq!(reply.state, SessionState::Closed, "{level}: {reply:?}");
        assert!(reply.result.is_err(), "{level}");
        assert!(!session.is_open());
        // Writing to the answer channel (fd 3) itself can't forge an
        // answer: the frame must carry the call's nonce, unknown to it.
        if level != SandboxLevel::Docker {
            let session = open(level);
            let reply = session
                .exec("import os\nos.write(3, b'0 16\\n{\"status\":\"ok\",\"result\":1}')\n41");
            assert_ne!(reply.result, Ok(json!(1)), "{level}: {reply:?}");
        }
    }
    // The memory cap of a process tier kills the process: closed, memory_limit.
    let session = Session::open(SandboxConfig {
        max_memory_mb: 100,
        ..config(SandboxLevel::Subprocess)
    })
    .unwrap();
    let reply = session.exec("keep = bytearray(400 << 20)");
    assert_eq!(
        reply.result.unwrap_err().kind(),
        ErrorKind::MemoryLimit,
        "{:?}",
        reply.stdout
    );
}

#[test]
fn a_wasm_session_snapshots_restores_and_forks() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let session = open(SandboxLevel::Wasm);
    // About 1 MB of user data, and a function.
    value(&session.exec(
        "import random\nrng = random.Random(7)\ndata = [rng.random() for _ in range(40000)]\nblob = bytes(range(256)) * 1024\ndef total():\n    return round(sum(data), 6), len(blob)",
    ));
    let expected = value(&session.call("total", Call::none()));
    let started = std::time::Instant::now();
    let bytes = session.snapshot().unwrap();
    let took = started.elapsed();
    assert!(bytes.len() < 3 << 20, "{} bytes", bytes.len());
    eprintln!("snapshot: {} bytes in {took:?}", bytes.len());

    // Restored, here: the same state; and independent of the original.
    let restored = Session::restore(config(SandboxLevel::Wasm), &bytes).unwrap();
    assert_eq!(value(&restored.call("total", Call::none())), expected);
    value(&restored.exec("data.clear()"));
    assert_eq!(
        value(&session.call("total", Call::none())),
        expected,
        "the original is untouched"
    );
    // A fork is a copy, too.
    let fork = session.fork().unwrap();
    value(&fork.exec("blob = b''"));
    assert_eq!(value(&session.exec("len(blob)")), json!(262144));
    assert_eq!(value(&fork.exec("len(blob)")), json!(0));
    // Limits and interrupts work in a restored session.
    let limited = Session::restore(
        SandboxConfig {
            timeout: Duration::from_millis(300),
            ..config(SandboxLevel::Wasm)
        },
        &bytes,
    )
    .unwrap();
    let reply = limited.exec("while True:\n    pass");
    assert_eq!(reply.state, SessionState::Interrupted);
    assert_eq!(value(&limited.exec("len(data)")), json!(40000));

    // In another process: the repl saves and loads.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.snap");
    let file = file.to_str().unwrap();
    let out = crate::common::cli_within(
        &["repl", "--save", file],
        "greeting = 'hello'\n",
        Duration::from_secs(120),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = crate::common::cli_within(
        &["repl", "--load", file],
        "greeting.upper()\n",
        Duration::from_secs(120),
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["value"], "HELLO", "{line}");
}

#[test]
fn bad_snapshots_are_typed_errors_and_other_tiers_have_none() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let session = open(SandboxLevel::Wasm);
    value(&session.exec("x = 1"));
    let bytes = session.snapshot().unwrap();
    let mut corrupted = bytes.clone();
    let middle = corrupted.len() / 2;
    corrupted[middle] ^= 0x55;
    // Another build's: the guest identity inside differs (the checksum is
    // recomputed, as a snapshot of that build would have it).
    let mut foreign = bytes[..bytes.len() - 8].to_vec();
    let at = foreign.windows(4).position(|_| true).unwrap() + 16;
    foreign[at] ^= 1;
    let checksum = foreign.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    foreign.extend_from_slice(&checksum.to_le_bytes());
    for (what, bad) in [
        ("empty", Vec::new()),
        ("garbage", b"definitely not a snapshot".to_vec()),
        ("cut short", bytes[..bytes.len() / 3].to_vec()),
        ("corrupted", corrupted),
        ("another build's", foreign),
    ] {
        let error = Session::restore(config(SandboxLevel::Wasm), &bad).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{what}: {error}");
    }
    // Bigger than the memory limit allows.
    let small = SandboxConfig {
        max_memory_mb: 8,
        ..config(SandboxLevel::Wasm)
    };
    let error = Session::restore(small, &bytes).unwrap_err();
    assert_eq!(error.kind(), ErrorKind::MemoryLimit, "{error}");
    for level in [SandboxLevel::None, SandboxLevel::Subprocess] {
        let session = open(level);
        let error = session.snapshot().unwrap_err();
        assert_eq!(error.kind(), ErrorKind::SandboxUnavailable, "{error}");
        assert!(error.to_string().contains("wasm tier only"), "{error}");
        assert!(session.fork().is_err());
        let error = Session::restore(config(level), &bytes).unwrap_err();
        assert!(error.to_string().contains("wasm tier only"), "{error}");
    }
}

#[test]
fn what_a_call_leaves_running_is_held_to_the_limits() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in [SandboxLevel::Subprocess, SandboxLevel::Docker] {
        let session = Session::open(SandboxConfig {
            timeout: Duration::from_secs(3),
            max_output_bytes: 4096,
            ..config(level)
        })
        .unwrap();
        // A thread that floods stdout after the call returned: the next
        // calls still end, with bounded output, and the host keeps its memory.
        value(&session.exec(
            "import os, threading\ndef flood():\n    while True:\n        os.write(1, b'x' * 65536)\nthreading.Thread(target=flood, daemon=True).start()",
        ));
        for _ in 0..3 {
            let reply = session.exec("1 + 1");
            assert!(
                reply.stdout.len() < 8192,
                "{level}: {} bytes",
                reply.stdout.len()
            );
            if reply.state == SessionState::Closed {
                break;
            }
        }
        // Closing does not wait for the flood to drain (the docker tier's
        // close once took 90 s here).
        let closing = std::time::Instant::now();
        session.close();
        assert!(
            closing.elapsed() < Duration::from_secs(10),
            "{level}: close took {:?}",
            closing.elapsed()
        );
        // A call that floods stdout until its time limit is stopped at it.
        let session = Session::open(SandboxConfig {
            timeout: Duration::from_secs(2),
            max_output_bytes: 4096,
            ..config(level)
        })
        .unwrap();
        let started = std::time::Instant::now();
        let reply = session.exec("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)");
        assert_eq!(
            reply.result.unwrap_err().kind(),
            ErrorKind::Timeout,
            "{level}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{level}: {:?}",
            started.elapsed()
        );
        session.close();
        // A result too big for the cap: the error, and the session can't
        // be read in step again, so it says it is closed (never a later
        // call broken by the rest of that answer).
        let session = Session::open(SandboxConfig {
            max_result_bytes: 1000,
            ..config(level)
        })
        .unwrap();
        let reply = session.exec("list(range(100000))");
        assert!(
            matches!(&reply.result, Err(TaskError::Failed { type_name, .. }) if type_name == "ResultTooLarge"),
            "{level}: {:?}",
            reply.result
        );
        if reply.state != SessionState::Closed {
            assert_eq!(value(&session.exec("2 + 2")), json!(4), "{level}");
        }
    }
    // CPU burnt between calls counts against the next call (and, with a
    // cgroup, the session's processes are frozen between calls).
    let session = Session::open(SandboxConfig {
        max_cpu_time: Duration::from_secs(1),
        ..config(SandboxLevel::Subprocess)
    })
    .unwrap();
    value(&session.exec(
        "import threading\ndef burn():\n    while True:\n        pass\nthreading.Thread(target=burn, daemon=True).start()",
    ));
    std::thread::sleep(Duration::from_millis(1500));
    let reply = session.exec("import time\nt = time.time()\nwhile time.time() - t < 3:\n    pass");
    assert_eq!(reply.result.unwrap_err().kind(), ErrorKind::Timeout);
}

#[test]
fn closing_stops_a_running_call() {
    let _suite = crate::common::suite(module_path!());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for level in [SandboxLevel::Wasm, SandboxLevel::Subprocess] {
        let session = Arc::new(open(level));
        let running = {
            let session = session.clone();
            std::thread::spawn(move || session.exec("while True:\n    pass"))
        };
        std::thread::sleep(Duration::from_millis(500));
        let started = std::time::Instant::now();
        session.close();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{level}: close waited for the call"
        );
        let reply = running.join().unwrap();
        assert_eq!(reply.result.unwrap_err(), TaskError::Cancelled, "{level}");
        assert!(!session.is_open());
    }
}
