//! `lattice-wasm bench`, run as a user would: the real binary, real tiers.

use std::process::Output;

use serde_json::Value;

fn bench(args: &[&str]) -> Output {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    crate::common::lattice_cli(&all, "", &[])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The result row of `tier` on `workload`.
fn row<'a>(report: &'a Value, workload: &str, tier: &str) -> &'a Value {
    report["results"]
        .as_array()
        .expect("results is a list")
        .iter()
        .find(|row| row["workload"] == workload && row["tier"] == tier)
        .unwrap_or_else(|| panic!("no {tier} row for {workload} in {report:#}"))
}

fn positive(value: &Value, what: &str) -> f64 {
    let number = value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"));
    assert!(number > 0.0, "{what} is {number}");
    number
}

#[test]
fn compares_wasm_and_subprocess_with_checked_answers() {
    let _suite = crate::common::suite(module_path!());
    let mut args = vec![
        "--tiers",
        "wasm,subprocess",
        "--tasks",
        "3",
        "--concurrency",
        "2",
        "--workloads",
        "trivial,raises",
        "--json",
    ];
    // The package references, where the test command made their Pythons
    // (scripts/reference-pythons.sh); without, they must say why not.
    let monty = std::env::var("LATTICE_MONTY_PYTHON").ok();
    let eryx = std::env::var("LATTICE_ERYX_PYTHON").ok();
    for (flag, python) in [("--monty-python", &monty), ("--eryx-python", &eryx)] {
        if let Some(python) = python {
            args.extend([flag, python.as_str()]);
        }
    }
    let output = bench(&args);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    assert!(positive(&report["machine"]["cores"], "cores") >= 1.0);
    assert_eq!(report["concurrency"], 2);
    let tiers: Vec<&str> = report["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tiers, ["wasm", "subprocess"]);
    // The in-process tier's engine and pooled instances stay resident.
    positive(
        &report["tiers"][0]["kept_resident_mb"],
        "wasm kept resident",
    );

    for workload in ["trivial", "raises"] {
        for tier in ["wasm", "subprocess"] {
            let row = row(&report, workload, tier);
            let what = format!("{tier} {workload}");
            assert_eq!(row["tasks"], 3, "{what}");
            assert_eq!(row["concurrency"], 2, "{what}");
            assert_eq!(row["reference"], false, "{what}");
            let p50 = positive(&row["p50_ms"], &format!("{what} p50"));
            let p99 = positive(&row["p99_ms"], &format!("{what} p99"));
            assert!(p99 >= p50, "{what}: p99 {p99} < p50 {p50}");
            positive(&row["throughput_c1"], &format!("{what} throughput c=1"));
            positive(&row["throughput_cn"], &format!("{what} throughput c=2"));
            let memory = &row["peak_rss_mb_per_sandbox"];
            assert!(
                memory.as_f64().is_some_and(|mb| mb >= 0.0),
                "{what} memory: {memory}"
            );
        }
        // A subprocess sandbox is a CPython process: megabytes of its own.
        positive(
            &row(&report, workload, "subprocess")["peak_rss_mb_per_sandbox"],
            "subprocess memory",
        );
        // The wasm tier is tens of times faster per task; more than 1 is safe.
        let wasm = row(&report, workload, "wasm");
        positive(&wasm["ratio_vs_subprocess"], "wasm ratio");
        assert!(
            wasm["ratio_vs_subprocess"].as_f64().unwrap() > 1.0,
            "{workload}: {wasm:#}"
        );
        assert_eq!(
            row(&report, workload, "subprocess")["ratio_vs_subprocess"],
            1.0
        );
        // Each tier's p50 against CPython's own compute (in-process, no
        // sandbox): a sandboxed task costs more than a bare call.
        for tier in ["wasm", "subprocess"] {
            let times = positive(
                &row(&report, workload, tier)["p50_vs_cpython"],
                &format!("{tier} {workload} vs cpython"),
            );
            assert!(times > 1.0, "{tier} {workload}: {times}");
        }
        assert_eq!(
            row(&report, workload, "cpython in-process")["p50_vs_cpython"],
            1.0
        );
    }

    // Each reference is measured or says why not.
    let references = report["references"].as_array().unwrap();
    let names: Vec<&str> = references
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["python3 -c", "cpython in-process", "pydantic-monty", "eryx"]
    );
    for reference in references {
        let name = reference["name"].as_str().unwrap();
        // Debian's python3 is installed by the test command.
        let given = match name {
            "pydantic-monty" => monty.is_some(),
            "eryx" => eryx.is_some(),
            _ => true,
        };
        if given {
            assert_eq!(reference["available"], true, "{reference}");
        }
        if reference["available"] == true {
            for workload in ["trivial", "raises"] {
                let row = row(&report, workload, name);
                assert_eq!(row["reference"], true);
                assert_eq!(row["tasks"], 3, "{name} {workload}");
                positive(&row["p50_ms"], &format!("{name} {workload} p50"));
                positive(&row["throughput_c1"], &format!("{name} throughput"));
            }
        } else {
            let reason = reference["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("not installed"), "{reference}");
        }
    }
}

#[test]
fn an_unknown_tier_or_workload_is_a_usage_error() {
    let _suite = crate::common::suite(module_path!());
    let output = bench(&["--tiers", "nope", "--tasks", "1"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("unknown tier 'nope'"),
        "{}",
        stderr(&output)
    );
    assert!(output.stdout.is_empty());

    let output = bench(&["--workloads", "trivial,nope"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("nope"), "{}", stderr(&output));
}

#[test]
fn a_missing_reference_python_is_reported_not_fatal() {
    let _suite = crate::common::suite(module_path!());
    let output = bench(&[
        "--tiers",
        "wasm",
        "--tasks",
        "1",
        "--concurrency",
        "1",
        "--workloads",
        "trivial",
        "--monty-python",
        "/nonexistent/python",
        "--eryx-python",
        "/nonexistent/python3.12",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("pydantic-monty: unavailable: not installed (pip install pydantic-monty): /nonexistent/python"),
        "{table}"
    );
    assert!(
        table.contains("eryx: unavailable: not installed (pip install pyeryx, into a Python >= 3.12): /nonexistent/python3.12 can't import eryx"),
        "{table}"
    );
    assert!(table.contains("== trivial"), "{table}");
}

#[test]
fn the_http_workload_compares_serve_with_batch_on_checked_answers() {
    let _suite = crate::common::suite(module_path!());
    let output = bench(&[
        "--tiers",
        "wasm",
        "--tasks",
        "300",
        "--concurrency",
        "2",
        "--workloads",
        "http",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let http = &report["http"];
    assert_eq!(http["tier"], "wasm", "{report:#}");
    assert_eq!(http["requests"], 300);
    assert_eq!(http["connections"], 64);
    assert_eq!(http["workers"], 2);
    for field in [
        "http_per_s",
        "batch_per_s",
        "vs_batch",
        "p50_ms",
        "sequential_p50_ms",
        "library_p50_ms",
    ] {
        positive(&http[field], field);
    }
    assert!(http["p99_ms"].as_f64().unwrap() >= http["p50_ms"].as_f64().unwrap());
    // What HTTP adds is a difference of medians: a number, maybe noise-small.
    assert!(http["overhead_p50_ms"].is_number(), "{http}");
}
