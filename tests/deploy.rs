//! The deploy kit (`deploy/`) cannot drift from the code: the example environment file names
//! every flag with its default, the completions and the manual page are generated from the
//! same definition as `--help`, the systemd unit passes `systemd-analyze verify` (no output
//! at all) with the hand-over's needs kept, the alert rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and the Debian package holds what it should and
//! its binary runs.
//!
//! The tools are Debian's (`systemd`, `prometheus` for promtool, `dpkg-dev`) and cargo-deb;
//! scripts/test.sh installs them. A test whose tool is missing fails and says what to install
//! (CI must run them all), unless `SSE_EDGE_DEPLOY_TOOLS=skip` says to skip it.

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `--flag` of the server (the flags `--help` lists, less help and version).
fn flags() -> BTreeSet<String> {
    sse_edge::node::config::Config::command()
        .get_arguments()
        .filter_map(|a| a.get_long())
        .map(str::to_owned)
        .collect()
}

/// The tool at `name`, or None when the run asked to skip tests whose tool is missing.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() && std::env::var("SSE_EDGE_DEPLOY_TOOLS").as_deref() == Ok("skip") {
        eprintln!("skipped: no {name} (Debian package {package})");
        return None;
    }
    Some(found.unwrap_or_else(|| {
        panic!(
            "no {name}: apt-get install --no-install-recommends {package} (scripts/test.sh does)"
        )
    }))
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_env_file_is_every_flag_with_its_default() {
    let path = "deploy/systemd/sse-edge.env";
    let want = sse_edge::node::config::env_file();
    if std::env::var("SSE_EDGE_BLESS").as_deref() == Ok("1") {
        std::fs::write(repo().join(path), &want).unwrap();
    }
    let have = read(path);
    for flag in flags() {
        let var = format!("SSE_EDGE_{}=", flag.to_uppercase().replace('-', "_"));
        assert!(
            have.lines()
                .any(|l| l.trim_start_matches('#').starts_with(&var)),
            "{path} has no {var} for --{flag}: regenerate it with \
             SSE_EDGE_BLESS=1 cargo test --test deploy the_example_env_file"
        );
    }
    assert!(
        have == want,
        "{path} differs from what the flags say (a default or a help text changed): \
         regenerate it with SSE_EDGE_BLESS=1 cargo test --test deploy the_example_env_file"
    );
}

#[test]
fn the_env_file_configures_a_node_as_its_comments_say() {
    // Each commented default, uncommented, is a value the node takes: the file is a working
    // configuration, not prose. (Variables without a default stay unset.)
    let env: Vec<(String, String)> = sse_edge::node::config::env_file()
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, v)| k.starts_with("SSE_EDGE_") && !v.is_empty())
        .filter(|(k, _)| *k != "SSE_EDGE_LISTEN")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(env.len() > 20, "{env:?}");
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.push(("SSE_EDGE_LISTEN", "127.0.0.1:0"));
    let server = util::Server::start_env(&all);
    assert_eq!(server.metrics()["sse_edge_clients"], 0.0);
    // A switch set to its commented default is off: a second node may not share the port.
    let out = Command::new(env!("CARGO_BIN_EXE_sse-edge"))
        .envs(all.iter().copied())
        .env("SSE_EDGE_LISTEN", server.addr.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn completions_and_the_manual_page_name_every_flag() {
    let exe = env!("CARGO_BIN_EXE_sse-edge");
    let (ok, man, err) = run(Command::new(exe).arg("man"));
    assert!(ok, "{err}");
    assert!(
        man.starts_with(".ie") || man.contains(".TH sse-edge 1"),
        "{man}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, err) = run(Command::new(exe).args(["completions", shell]));
        assert!(ok, "{shell}: {err}");
        for flag in flags() {
            let as_typed = match shell {
                "fish" => format!("-l {flag}"),
                _ => format!("--{flag}"),
            };
            assert!(
                script.contains(&as_typed),
                "{shell} completion lacks --{flag}"
            );
        }
        // The subcommands main dispatches by hand are completed too.
        for sub in ["token", "upgrade", "completions", "man"] {
            assert!(script.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    for flag in flags() {
        // roff writes a dash as \-.
        let roff = format!("\\-\\-{}", flag.replace('-', "\\-"));
        assert!(man.contains(&roff), "the manual page lacks --{flag}");
    }
    let (ok, _, err) = run(Command::new(exe).args(["completions", "tcsh"]));
    assert!(
        !ok && err.lines().count() == 1 && err.contains("bash"),
        "{err}"
    );
}

/// The unit with its binary paths pointed at this build, in a fresh directory, with the
/// generated manual page on a MANPATH (the unit's `Documentation=man:sse-edge(1)` is checked).
fn unit_for_this_build(dir: &Path) -> (PathBuf, PathBuf) {
    let exe = env!("CARGO_BIN_EXE_sse-edge");
    let unit = read("deploy/systemd/sse-edge.service").replace("/usr/bin/sse-edge", exe);
    let path = dir.join("sse-edge.service");
    std::fs::write(&path, unit).unwrap();
    let man = dir.join("man");
    std::fs::create_dir_all(man.join("man1")).unwrap();
    let (ok, page, err) = run(Command::new(exe).arg("man"));
    assert!(ok, "{err}");
    std::fs::write(man.join("man1/sse-edge.1"), page).unwrap();
    (path, man)
}

#[test]
fn the_unit_passes_systemd_analyze_verify_with_no_output() {
    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = util::tempdir("unit-verify");
    let (unit, man) = unit_for_this_build(&dir);
    let (_, out, err) = run(Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", &man)
        .current_dir(&dir));
    // verify warns about unknown keys and bad values and still exits 0: any output fails.
    assert_eq!(format!("{out}{err}"), "", "systemd-analyze verify {unit:?}");

    // The check can fail: a misspelt directive is reported.
    let broken = dir.join("broken.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    std::fs::write(&broken, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let (_, out, err) = run(Command::new(&analyze)
        .arg("verify")
        .arg(&broken)
        .env("MANPATH", &man)
        .current_dir(&dir));
    assert!(
        format!("{out}{err}").contains("NoNewPrivilege"),
        "{out}{err}"
    );
}

#[test]
fn the_unit_keeps_what_the_hand_over_needs_and_its_exposure_score_is_the_readmes() {
    let unit = read("deploy/systemd/sse-edge.service");
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(values("Type"), ["notify"]);
    // The new process's READY=1 comes from a process that is not the main one yet.
    assert_eq!(values("NotifyAccess"), ["all"]);
    assert_eq!(
        values("ExecReload"),
        ["/usr/bin/sse-edge upgrade --pid $MAINPID"]
    );
    // The socket pair of the hand-over and the notify socket are AF_UNIX.
    let families = values("RestrictAddressFamilies").join(" ");
    assert!(families.split(' ').any(|f| f == "AF_UNIX"), "{families}");
    // The open-files limit is raised with setrlimit: @resources must not be denied.
    for filter in values("SystemCallFilter") {
        assert!(!filter.contains("@resources"), "{filter}");
        assert!(!filter.starts_with("~@system-service"), "{filter}");
    }
    assert!(values("LimitNOFILE")[0].parse::<u64>().unwrap() >= 1 << 20);
    assert_eq!(values("EnvironmentFile"), ["-/etc/default/sse-edge"]);
    // After an upgrade systemd does not wait for the main process (it did not start it), so
    // the drain's SIGTERM is sent and waited for by ExecStop=.
    let stop = values("ExecStop").join("");
    assert!(
        stop.contains("kill -TERM $$MAINPID") && stop.contains("while kill -0 $$MAINPID"),
        "{stop}"
    );
    // No KillMode=process or none: the whole cgroup (both processes mid-upgrade) stops.
    assert!(values("KillMode").is_empty());
    assert_eq!(values("CapabilityBoundingSet"), [""]);

    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    let dir = util::tempdir("unit-security");
    let (path, _) = unit_for_this_build(&dir);
    let (_, out, err) = run(Command::new(&analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .current_dir(&dir));
    let score = format!("{out}{err}")
        .lines()
        .find_map(|l| l.split("exposure level for sse-edge.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no exposure level: {out}{err}"));
    let readme = read("README.md");
    assert!(
        readme.contains(&format!("exposure level {score} ")),
        "README.md must give the unit's exposure score as `exposure level {score} ` \
         (systemd-analyze security --offline=yes)"
    );
}

/// Runs a maintainer script as dpkg would, with stand-ins for the tools it calls (each logs
/// its name and arguments) and systemd "running"; returns the calls.
fn maintainer_script(name: &str, args: &[&str], dir: &Path) -> Vec<String> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls");
    let _ = std::fs::remove_file(&calls);
    for tool in [
        "systemctl",
        "deb-systemd-invoke",
        "deb-systemd-helper",
        "adduser",
        "getent",
    ] {
        let stub = bin.join(tool);
        // getent says the user is missing (exit 2), so postinst creates it.
        let code = if tool == "getent" { 2 } else { 0 };
        std::fs::write(
            &stub,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit {code}\n",
                calls.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let systemd_runs = dir.join("run-systemd-system");
    std::fs::create_dir_all(&systemd_runs).unwrap();
    let script = read(&format!("deploy/debian/{name}"))
        .replace("/run/systemd/system", systemd_runs.to_str().unwrap());
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let search = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (ok, out, err) = run(Command::new("sh").arg(&path).args(args).env("PATH", search));
    assert!(ok, "{name} {args:?}: {out}{err}");
    std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_package_upgrade_reloads_the_node_and_never_restarts_or_stops_it() {
    let dir = util::tempdir("maintainer-scripts");
    // First install: the user, enabled, started.
    let first = maintainer_script("postinst", &["configure", ""], &dir);
    assert!(
        first.iter().any(|c| c.starts_with("adduser --system")),
        "{first:?}"
    );
    assert!(
        first.contains(&"deb-systemd-helper enable sse-edge.service".to_owned()),
        "{first:?}"
    );
    assert!(
        first.contains(&"deb-systemd-invoke start sse-edge.service".to_owned()),
        "{first:?}"
    );
    // An upgrade from 0.0.9: prerm of the old package does nothing, postinst reloads.
    let before = maintainer_script("prerm", &["upgrade", "0.1.0"], &dir);
    assert_eq!(before, Vec::<String>::new());
    let upgrade = maintainer_script("postinst", &["configure", "0.0.9"], &dir);
    assert!(
        upgrade.contains(&"deb-systemd-invoke reload sse-edge.service".to_owned()),
        "{upgrade:?}"
    );
    for call in first.iter().chain(&upgrade) {
        assert!(
            !call.contains("restart") && !call.contains(" stop "),
            "{call}"
        );
    }
    assert!(
        !upgrade.iter().any(|c| c.contains(" start ")),
        "{upgrade:?}"
    );
    // Removal stops it; purge forgets it.
    let remove = maintainer_script("prerm", &["remove"], &dir);
    assert_eq!(remove, ["deb-systemd-invoke stop sse-edge.service"]);
    let purge = maintainer_script("postrm", &["purge"], &dir);
    assert!(
        purge.contains(&"deb-systemd-helper purge sse-edge.service".to_owned()),
        "{purge:?}"
    );
}

#[test]
fn the_debian_package_holds_the_kit_and_its_binary_runs() {
    let Some(dpkg_deb) = tool("dpkg-deb", "dpkg") else {
        return;
    };
    if tool("cargo-deb", "cargo install --locked cargo-deb").is_none() {
        return;
    }
    let dir = util::tempdir("package");
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    let (ok, stdout, err) = run(Command::new("bash")
        .arg(repo().join("deploy/debian/build.sh"))
        .args(["--debug", "--out"])
        .arg(&out));
    assert!(ok, "build.sh --debug: {stdout}{err}");
    let deb = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let (ok, contents, err) = run(Command::new(&dpkg_deb).arg("--contents").arg(&deb));
    assert!(ok, "{err}");
    for (path, mode) in [
        ("./usr/bin/sse-edge", "-rwxr-xr-x"),
        ("./lib/systemd/system/sse-edge.service", "-rw-r--r--"),
        ("./etc/default/sse-edge", "-rw-------"),
        ("./usr/share/man/man1/sse-edge.1.gz", "-rw-r--r--"),
        (
            "./usr/share/bash-completion/completions/sse-edge",
            "-rw-r--r--",
        ),
        ("./usr/share/zsh/vendor-completions/_sse-edge", "-rw-r--r--"),
        (
            "./usr/share/fish/vendor_completions.d/sse-edge.fish",
            "-rw-r--r--",
        ),
        ("./usr/share/sse-edge/prometheus/alerts.yml", "-rw-r--r--"),
        ("./usr/share/sse-edge/grafana/sse-edge.json", "-rw-r--r--"),
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.starts_with(mode) && l.ends_with(&format!(" {path}"))),
            "{path} ({mode}) not in the package:\n{contents}"
        );
    }
    // Our maintainer scripts, and the settings file kept as a conffile.
    let control = dir.join("control");
    let _ = std::fs::remove_dir_all(&control);
    let (ok, _, err) = run(Command::new(&dpkg_deb).arg("-e").arg(&deb).arg(&control));
    assert!(ok, "{err}");
    for script in ["postinst", "prerm", "postrm"] {
        let packaged = std::fs::read_to_string(control.join(script)).unwrap();
        assert_eq!(
            packaged,
            read(&format!("deploy/debian/{script}")),
            "{script}"
        );
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/default/sse-edge");
    let fields = std::fs::read_to_string(control.join("control")).unwrap();
    assert!(fields.contains("Depends: adduser"), "{fields}");

    // The packaged files are the repository's, and the binary runs.
    let root = dir.join("root");
    let _ = std::fs::remove_dir_all(&root);
    let (ok, _, err) = run(Command::new(&dpkg_deb).arg("-x").arg(&deb).arg(&root));
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_to_string(root.join("lib/systemd/system/sse-edge.service")).unwrap(),
        read("deploy/systemd/sse-edge.service")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/default/sse-edge")).unwrap(),
        read("deploy/systemd/sse-edge.env")
    );
    let exe = root.join("usr/bin/sse-edge");
    let (ok, version, err) = run(Command::new(&exe).arg("--version"));
    assert!(ok, "{err}");
    assert_eq!(
        version.trim(),
        format!("sse-edge {}", env!("CARGO_PKG_VERSION"))
    );
    let (ok, help, err) = run(Command::new(&exe).arg("--help"));
    assert!(ok && help.contains("--log-format"), "{help}{err}");
    let bash = std::fs::read_to_string(root.join("usr/share/bash-completion/completions/sse-edge"))
        .unwrap();
    assert!(bash.contains("--log-format"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The alert names of alerts.yml.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_each_has_a_case_that_fires_and_one_that_does_not() {
    let rules = read("deploy/prometheus/alerts.yml");
    let tests = read("deploy/prometheus/alerts_test.yml");
    let names = alert_names(&rules);
    assert!(names.len() >= 14, "{names:?}");
    // Every rule says what it is and where to look.
    let summaries = rules.matches("\n          summary: ").count();
    let descriptions = rules.matches("\n          description: ").count();
    assert_eq!((summaries, descriptions), (names.len(), names.len()));
    // Cases: `alertname: X` then `exp_alerts: []` (quiet) or a list (fires).
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for pair in lines.windows(2) {
        if let Some(name) = pair[0].strip_prefix("alertname: ") {
            match pair[1] {
                "exp_alerts: []" => quiet.insert(name.to_owned()),
                "exp_alerts:" => fires.insert(name.to_owned()),
                other => panic!("after alertname {name}: {other}"),
            };
        }
    }
    for name in &names {
        assert!(
            fires.contains(name),
            "no case in alerts_test.yml fires {name}"
        );
        assert!(
            quiet.contains(name),
            "no case in alerts_test.yml keeps {name} quiet"
        );
    }

    let Some(promtool) = tool("promtool", "prometheus") else {
        return;
    };
    let dir = repo().join("deploy/prometheus");
    let (ok, out, err) = run(Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    assert!(
        ok && out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{out}{err}"
    );
    let (ok, out, err) = run(Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir));
    assert!(ok, "promtool test rules: {out}{err}");

    // The tests can fail: a rule whose threshold moved no longer fires where they say.
    let copy = util::tempdir("alerts-broken");
    std::fs::write(copy.join("alerts_test.yml"), &tests).unwrap();
    std::fs::write(
        copy.join("alerts.yml"),
        rules.replace(
            "sse_edge_broker_lag_seconds > 5",
            "sse_edge_broker_lag_seconds > 50",
        ),
    )
    .unwrap();
    let (ok, out, err) = run(Command::new(&promtool)
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&copy));
    assert!(
        !ok && format!("{out}{err}").contains("SseEdgeBrokerLagging"),
        "{out}{err}"
    );
    std::fs::remove_dir_all(&copy).ok();
}
