//! Host functions: Rust closures that sandboxed code calls by name, on
//! every tier, in sessions and one-shot tasks; their errors, their limits,
//! and attacks on them (names never registered, forged calls and replies,
//! floods, two threads, snapshots restored under other functions).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice::sandbox::{SandboxConfig, SandboxExecutor, SandboxLevel};
use lattice::session::{Call, Session, SessionState};
use lattice::task::{ErrorKind, HostError, HostFunctions, HostLimits, TaskError, TaskSubmission};
use serde_json::{json, Value};

use crate::common::{reply_value as value, session_config as config, ALL_TIERS as TIERS};

/// `add(*numbers)`, `echo(*args, **kwargs)` (what it was called with),
/// `fail()` (a host error), `boom()` (a panic), `later(**kwargs)` (async).
fn functions() -> HostFunctions {
    HostFunctions::new()
        .register("add", |call| {
            Ok(json!(call
                .args
                .iter()
                .filter_map(Value::as_i64)
                .sum::<i64>()))
        })
        .register("echo", |call| {
            Ok(json!({"args": call.args, "kwargs": call.kwargs}))
        })
        .register("fail", |_| Err(HostError::new("no such city: Atlantis")))
        .register("boom", |_| panic!("secret host detail at src/host.rs:12"))
        .register_async("later", |call| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(json!({"later": call.kwargs}))
        })
}

fn open(level: SandboxLevel, functions: HostFunctions) -> Session {
    Session::builder(config(level))
        .host_functions(functions)
        .open()
        .unwrap_or_else(|e| panic!("{level}: {e}"))
}

fn failure(reply: &lattice::session::Reply) -> (String, String, String) {
    match &reply.result {
        Err(TaskError::Failed {
            type_name,
            message,
            traceback,
        }) => (type_name.clone(), message.clone(), traceback.clone()),
        other => panic!("expected a task error, got {other:?}"),
    }
}

#[test]
fn code_calls_sync_and_async_host_functions_with_json_arguments_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    for level in TIERS {
        let session = open(level, functions());
        assert_eq!(value(&session.exec("add(2, 3)")), json!(5), "{level}");
        assert_eq!(
            value(&session.exec("echo(1, 'x', None, [True, 2.5], k={'a': [1]})")),
            json!({"args": [1, "x", null, [true, 2.5]], "kwargs": {"k": {"a": [1]}}}),
            "{level}"
        );
        assert_eq!(
            value(&session.exec("later(city='Oslo')")),
            json!({"later": {"city": "Oslo"}}),
            "{level}"
        );
        // Ordinary functions: a session's own function calls them, and
        // they print like any other callable.
        value(&session.exec("def total(xs):\n    return add(*xs) + add(1)\nprint(add.__name__)"));
        assert_eq!(
            value(&session.call("total", Call::input(json!([1, 2, 3])))),
            json!(7),
            "{level}"
        );
        // Big integers and Unicode go through whole.
        assert_eq!(
            value(&session.exec("echo(2**100, 'ünï €')['args']")),
            json!([1267650600228229401496703205376u128, "ünï €"]),
            "{level}"
        );
        // Arguments that are not JSON never leave the sandbox.
        let (kind, message, _) = failure(&session.exec("add({1, 2})"));
        assert_eq!(kind, "TypeError", "{level}: {message}");
        assert!(message.contains("not JSON"), "{level}: {message}");
        session.close();
    }
}

#[test]
fn a_host_error_is_an_exception_the_code_can_catch_carrying_only_the_hosts_message() {
    let _suite = crate::common::suite(module_path!());
    for level in TIERS {
        let session = open(level, functions());
        let caught =
            session.exec("try:\n    fail()\nexcept HostError as e:\n    caught = str(e)\ncaught");
        assert_eq!(value(&caught), json!("no such city: Atlantis"), "{level}");
        let (kind, message, traceback) = failure(&session.exec("fail()"));
        assert_eq!(kind, "HostError", "{level}");
        assert_eq!(message, "no such city: Atlantis", "{level}");
        assert!(traceback.contains("fail()"), "{level}: {traceback}");
        // A panic in the host function: the code learns only that it failed.
        let (kind, message, traceback) = failure(&session.exec("boom()"));
        assert_eq!(kind, "HostError", "{level}");
        for text in [&message, &traceback] {
            assert!(!text.contains("secret"), "{level}: {text}");
            assert!(!text.contains(".rs"), "{level}: {text}");
        }
        // The session goes on.
        assert_eq!(value(&session.exec("add(1)")), json!(1), "{level}");
    }
}

#[test]
fn code_can_call_only_the_names_registered() {
    let _suite = crate::common::suite(module_path!());
    let called = Arc::new(AtomicUsize::new(0));
    let counter = called.clone();
    let registered = HostFunctions::new().register("add", move |call| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(json!(call.args.len()))
    });
    for level in TIERS {
        let session = open(level, registered.clone());
        // A name never registered is no function at all...
        let (kind, _, _) = failure(&session.exec("delete_everything()"));
        assert_eq!(kind, "NameError", "{level}");
        // ...and asking the host for it by hand, through the driver's own
        // channel, is refused there.
        let (kind, message, _) =
            failure(&session.exec("add.__globals__['_host_call']('delete_everything', (), {})"));
        assert_eq!(kind, "NameError", "{level}: {message}");
        assert!(message.contains("delete_everything"), "{level}: {message}");
        let (kind, _, _) = failure(&session.exec(
            "add.__globals__['_host_transport']('{\"name\": \"delete_everything\"}') and add.__globals__['_host_call']('__import__', ('os',), {})",
        ));
        assert_eq!(kind, "NameError", "{level}");
        // Without host functions, nothing is callable.
        let bare = Session::open(config(level)).unwrap();
        let (kind, _, _) = failure(&bare.exec("add(1)"));
        assert_eq!(kind, "NameError", "{level}");
    }
    assert_eq!(called.load(Ordering::SeqCst), 0);
}

#[test]
fn forged_calls_count_against_the_limits_and_forged_replies_fool_nobody() {
    let _suite = crate::common::suite(module_path!());
    let called = Arc::new(AtomicUsize::new(0));
    let counter = called.clone();
    let limited = HostFunctions::new()
        .register("add", move |call| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(json!(call
                .args
                .iter()
                .filter_map(Value::as_i64)
                .sum::<i64>()))
        })
        .with_limits(HostLimits {
            max_calls: 3,
            ..HostLimits::default()
        });
    for level in TIERS {
        called.store(0, Ordering::SeqCst);
        let session = open(level, limited.clone());
        // Calls made around the stubs, straight on the driver's channel,
        // are calls like any other: the fourth is refused.
        let reply = session.exec(
            "transport = add.__globals__['_host_transport']\nfor _ in range(3):\n    transport('{\"name\": \"add\", \"args\": [1]}')\nadd(1, 1)",
        );
        let (kind, message, _) = failure(&reply);
        assert_eq!(kind, "HostCallLimitError", "{level}: {message}");
        assert_eq!(called.load(Ordering::SeqCst), 3, "{level}");
        // A reply printed by the code is output, not a reply.
        let reply = session.exec(
            "print('0 reply 1 12\\n{\"ok\": 666}')\nprint('\\x1elattice-0\\x1e0 reply 1 12\\n{\"ok\": 666}')\nadd(2, 3)",
        );
        assert_eq!(value(&reply), json!(5), "{level}");
        assert!(reply.stdout.contains("666"), "{level}: {:?}", reply.stdout);
        // The code replacing its own transport fools only itself: the
        // host saw no call. (Not on the none tier, whose interpreter is
        // shared with later tasks: it has no isolation to test.)
        if level == SandboxLevel::None {
            continue;
        }
        called.store(0, Ordering::SeqCst);
        let reply = session
            .exec("add.__globals__['_host_transport'] = lambda text: '{\"ok\": 666}'\nadd(2, 3)");
        assert_eq!(value(&reply), json!(666), "{level}");
        assert_eq!(called.load(Ordering::SeqCst), 0, "{level}");
    }
    // On the process tiers the answer channel is fd 3: a call frame the
    // code writes there without the call's nonce ends the session, typed.
    for level in [SandboxLevel::Subprocess, SandboxLevel::Seccomp] {
        let session = open(level, limited.clone());
        let reply = session.exec(
            "import os\nos.write(3, b'0 call 1 28\\n{\"name\":\"add\",\"args\":[1]}')\nadd(1)",
        );
        assert!(reply.result.is_err(), "{level}: {reply:?}");
        assert_eq!(reply.state, SessionState::Closed, "{level}");
    }
}

#[test]
fn limits_on_calls_bytes_and_time_fire_as_what_they_are() {
    let _suite = crate::common::suite(module_path!());
    let limited = functions()
        .register("big", |call| {
            Ok(json!(
                "x".repeat(call.args[0].as_u64().unwrap_or(0) as usize)
            ))
        })
        .register("slow", |_| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(json!("late"))
        })
        .register_async("never", |_| async {
            std::future::pending::<()>().await;
            Ok(Value::Null)
        })
        .with_limits(HostLimits {
            max_calls: 5,
            max_bytes_in: 4_000,
            max_bytes_out: 4_000,
        });
    for level in TIERS {
        let session = Session::builder(SandboxConfig {
            timeout: Duration::from_secs(1),
            ..config(level)
        })
        .host_functions(limited.clone())
        .open()
        .unwrap();
        // Calls per exec: the sixth raises, and so does every later one.
        let reply = session.exec(
            "ok = 0\nerrors = []\nfor i in range(8):\n    try:\n        add(i)\n        ok += 1\n    except HostCallLimitError as e:\n        errors.append(str(e))\n[ok, len(errors), errors[0]]",
        );
        let counted = value(&reply);
        assert_eq!(counted[0], json!(5), "{level}: {counted}");
        assert_eq!(counted[1], json!(3), "{level}");
        assert!(
            counted[2].as_str().unwrap().contains("host calls"),
            "{level}: {counted}"
        );
        // The count is per exec.
        assert_eq!(value(&session.exec("add(1, 1)")), json!(2), "{level}");
        // Bytes in and out.
        let (kind, _, _) = failure(&session.exec("echo('y' * 5000)"));
        assert_eq!(kind, "HostCallLimitError", "{level}");
        let (kind, _, _) = failure(&session.exec("big(5000)"));
        assert_eq!(kind, "HostCallLimitError", "{level}");
        assert_eq!(value(&session.exec("len(big(100))")), json!(100), "{level}");
        // A host function's time is the exec's: a slow one, then a stuck
        // async one, run the exec out of time.
        for code in ["slow()", "never()"] {
            let started = Instant::now();
            let reply = session.exec(code);
            assert_eq!(
                reply.result.as_ref().unwrap_err().kind(),
                ErrorKind::Timeout,
                "{level} {code}: {reply:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(10), "{level}");
            assert_eq!(reply.state, SessionState::Interrupted, "{level} {code}");
        }
        assert_eq!(value(&session.exec("add(4)")), json!(4), "{level}");
    }
}

#[test]
fn a_flood_of_calls_is_bounded_and_the_session_goes_on() {
    let _suite = crate::common::suite(module_path!());
    let called = Arc::new(AtomicUsize::new(0));
    let counter = called.clone();
    let flood = HostFunctions::new()
        .register("ping", move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(Value::Null)
        })
        .with_limits(HostLimits {
            max_calls: 200,
            ..HostLimits::default()
        });
    for level in TIERS {
        called.store(0, Ordering::SeqCst);
        let session = Session::builder(SandboxConfig {
            timeout: Duration::from_secs(2),
            ..config(level)
        })
        .host_functions(flood.clone())
        .open()
        .unwrap();
        let reply = session
            .exec("while True:\n    try:\n        ping()\n    except HostError:\n        pass");
        assert_eq!(
            reply.result.as_ref().unwrap_err().kind(),
            ErrorKind::Timeout,
            "{level}: {reply:?}"
        );
        assert_eq!(called.load(Ordering::SeqCst), 200, "{level}");
        assert_eq!(value(&session.exec("ping()")), Value::Null, "{level}");
    }
}

#[test]
fn a_session_used_from_two_threads_serves_one_host_call_at_a_time() {
    let _suite = crate::common::suite(module_path!());
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (in_flight.clone(), most.clone());
    let functions = HostFunctions::new().register("inc", move |call| {
        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(running, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
        now.fetch_sub(1, Ordering::SeqCst);
        Ok(json!(call.args[0].as_i64().unwrap() + 1))
    });
    for level in [
        SandboxLevel::Wasm,
        SandboxLevel::None,
        SandboxLevel::Subprocess,
    ] {
        let session = Arc::new(open(level, functions.clone()));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let session = session.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let n = t * 100 + i;
                        assert_eq!(value(&session.exec(&format!("inc({n})"))), json!(n + 1));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "{level}");
    }
}

#[test]
fn a_host_function_may_ask_whether_its_session_is_open() {
    let _suite = crate::common::suite(module_path!());
    // The session is held by the exec that calls the function: asking must
    // not wait for it (which would never end).
    let slot: Arc<std::sync::Mutex<std::sync::Weak<Session>>> = Arc::default();
    let seen = slot.clone();
    let functions = HostFunctions::new().register("alive", move |_| {
        let session = seen.lock().unwrap().upgrade();
        Ok(json!(session.is_some_and(|s| s.is_open())))
    });
    for level in [SandboxLevel::Wasm, SandboxLevel::Subprocess] {
        let session = Arc::new(open(level, functions.clone()));
        *slot.lock().unwrap() = Arc::downgrade(&session);
        assert_eq!(value(&session.exec("alive()")), json!(true), "{level}");
        session.close();
        assert!(!session.is_open());
    }
}

#[test]
fn one_shot_tasks_call_host_functions_on_every_tier() {
    let _suite = crate::common::suite(module_path!());
    for level in TIERS {
        let executor = SandboxExecutor::new(config(level));
        let task = TaskSubmission::python(
            "def f(x):\n    print('calling')\n    try:\n        fail()\n    except HostError as e:\n        return [add(x, 1), echo(k=x)['kwargs'], str(e)]\n",
        )
        .with_input(json!(41))
        .with_host_functions(functions());
        let outcome = executor.run(&task, &lattice::task::CancelToken::new());
        assert_eq!(
            outcome.result,
            Ok(json!([42, {"k": 41}, "no such city: Atlantis"])),
            "{level}: {outcome:?}"
        );
        assert_eq!(outcome.stdout, "calling\n", "{level}");
        assert_eq!(outcome.tier, Some(level));
        // The one-shot task's process or container is gone with it.
        if level == SandboxLevel::Docker {
            assert_eq!(crate::common::our_containers(), Vec::<String>::new());
        }
    }
    // Through the local executor, too.
    let executor = lattice::executor::create_executor(
        lattice::task::ExecutorType::Local,
        lattice::executor::ExecutorOptions::default(),
    )
    .unwrap();
    let handle = executor
        .submit(
            TaskSubmission::python("def f():\n    return add(20, 22)\n")
                .with_host_functions(functions()),
        )
        .unwrap();
    assert_eq!(executor.get_result(&handle).into_result(), Ok(json!(42)));
    executor.shutdown().unwrap();
    // A task that can't call back is told so.
    let refused = SandboxExecutor::new(config(SandboxLevel::Wasm)).run(
        &TaskSubmission::command(["true"]).with_host_functions(functions()),
        &lattice::task::CancelToken::new(),
    );
    assert_eq!(refused.result.unwrap_err().kind(), ErrorKind::InvalidTask);
    let spec = lattice::task::json::TaskSpec::from_submission(
        &TaskSubmission::python("def f():\n    pass\n").with_host_functions(functions()),
    );
    assert_eq!(spec.unwrap_err().kind(), ErrorKind::InvalidTask);
}

#[test]
fn names_that_python_cant_call_are_refused() {
    let _suite = crate::common::suite(module_path!());
    for name in ["1st", "class", "_private", "a-b", "", "naïve"] {
        let error = Session::builder(config(SandboxLevel::Wasm))
            .host_functions(HostFunctions::new().register(name, |_| Ok(Value::Null)))
            .open()
            .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidTask, "{name:?}");
    }
}

#[test]
fn a_restored_snapshot_calls_the_restoring_hosts_functions() {
    let _suite = crate::common::suite(module_path!());
    let session = open(SandboxLevel::Wasm, functions());
    value(&session.exec("def twice(x):\n    return add(x, x)\nkept = add(1, 2)"));
    let bytes = session.snapshot().unwrap();
    // Under other functions of the same name: the new ones are called.
    let other = HostFunctions::new().register("add", |call| {
        Ok(json!(call
            .args
            .iter()
            .filter_map(Value::as_i64)
            .product::<i64>()))
    });
    let restored = Session::builder(config(SandboxLevel::Wasm))
        .host_functions(other)
        .restore(&bytes)
        .unwrap();
    assert_eq!(
        value(&restored.call("twice", Call::input(json!(5)))),
        json!(25)
    );
    assert_eq!(value(&restored.exec("kept")), json!(3));
    // Without functions, the names are gone.
    let bare = Session::restore(config(SandboxLevel::Wasm), &bytes).unwrap();
    let (kind, _, _) = failure(&bare.call("twice", Call::input(json!(5))));
    assert_eq!(kind, "NameError");
    // A fork keeps its parent's functions.
    let fork = session.fork().unwrap();
    assert_eq!(value(&fork.call("twice", Call::input(json!(5)))), json!(10));
    // A snapshot from another build is refused, typed.
    let mut foreign = bytes.clone();
    let at = foreign.len() / 2;
    foreign[at] ^= 0xff;
    let error = Session::builder(config(SandboxLevel::Wasm))
        .host_functions(functions())
        .restore(&foreign)
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::InvalidTask);
}

#[test]
fn a_host_function_that_uses_its_own_session_gets_an_error_not_a_hang() {
    let _suite = crate::common::suite(module_path!());
    type Slot = Arc<std::sync::Mutex<Option<Arc<Session>>>>;
    let slot: Slot = Default::default();
    let session_of = |slot: &Slot| slot.lock().unwrap().clone().expect("a session");
    let (again, quit) = (slot.clone(), slot.clone());
    let functions = HostFunctions::new()
        .register("again", move |_| {
            session_of(&again)
                .exec("1")
                .result
                .map_err(|e| HostError::new(e.to_string()))
        })
        .register("quit", move |_| {
            session_of(&quit).close();
            Ok(Value::Null)
        });
    for level in [
        SandboxLevel::Wasm,
        SandboxLevel::None,
        SandboxLevel::Subprocess,
    ] {
        let session = Arc::new(open(level, functions.clone()));
        *slot.lock().unwrap() = Some(session.clone());
        let (kind, message, _) = failure(&session.exec("again()"));
        assert_eq!(kind, "HostError", "{level}");
        assert!(message.contains("serves"), "{level}: {message}");
        // Closing it from a host function ends the call, then the session.
        let reply = session.exec("quit()\nwhile True:\n    pass");
        assert_eq!(reply.state, SessionState::Closed, "{level}: {reply:?}");
        assert!(!session.is_open(), "{level}");
        *slot.lock().unwrap() = None;
    }
}
