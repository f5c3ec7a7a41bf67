//! h2spec's cases for the frames the edge handles, and the hostile patterns of issue 28, run over
//! h2c against the real binary by a client no one here wrote (PyPI's `h2`: its `hyperframe` and
//! `hpack`, in the venv `scripts/test.sh` makes at `target/py`). The cases are in
//! `tests/h2spec/`, each named after its h2spec case; this test starts the nodes and runs them.

mod util;

use std::path::PathBuf;
use std::process::Command;

use util::Server;

fn python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import h2, hyperframe, hpack"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} with PyPI's h2 is missing: `bash scripts/test.sh` installs it",
        py.display()
    );
    py
}

#[test]
fn h2spec_port_and_hostile_patterns_over_h2c() {
    let py = python();
    let conformance = Server::start(&[]);
    // Short bounds, so that the stall and the unfinished preface end within the test's patience
    // (the defaults are 30 s and 10 s); a small client buffer makes the stalled stream drop.
    let hostile = Server::start(&[
        "--header-timeout",
        "2",
        "--slow-client-timeout",
        "2",
        "--client-buffer",
        "8192",
    ]);
    let limited = Server::start(&["--h2-max-streams", "7"]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/h2spec/run.py");
    let out = Command::new(py)
        .arg("-B")
        .arg(script)
        .args(["--conformance", &conformance.addr.to_string()])
        .args(["--hostile", &hostile.addr.to_string()])
        .args(["--max-streams", &limited.addr.to_string(), "7"])
        .output()
        .expect("run tests/h2spec/run.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = |title: &str| -> (u32, u32) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(title))
            .unwrap_or_else(|| panic!("no {title:?} summary in:\n{stdout}"));
        let nums: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        // "h2spec port: N cases, N passed" (the "2" of h2spec is a number too: take the last two).
        (nums[nums.len() - 2], nums[nums.len() - 1])
    };
    let (cases, passed) = summary("h2spec port:");
    let (hostile_cases, hostile_passed) = summary("hostile:");
    let (limit_cases, limit_passed) = summary("--h2-max-streams:");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.contains("FAIL")).collect();
    assert!(
        cases > 90
            && passed == cases
            && hostile_cases == 8
            && hostile_passed == hostile_cases
            && (limit_cases, limit_passed) == (1, 1),
        "h2spec port: {passed}/{cases}, hostile: {hostile_passed}/{hostile_cases}, \
         --h2-max-streams: {limit_passed}/{limit_cases}; failed:\n{}",
        failed.join("\n")
    );
    assert!(out.status.success(), "run.py exited {}", out.status);
}
