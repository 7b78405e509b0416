//! The command line's contract: usage errors exit 2 with a one-line reason; help exits 0.
use std::process::Command;

fn trace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sockact-trace"))
        .args(args)
        .output()
        .expect("running sockact-trace")
}

#[test]
fn an_unknown_option_exits_2_naming_it() {
    let out = trace(&["--no-such-option"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap_or("")
            .contains("--no-such-option"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_value_exits_2() {
    let out = trace(&["--duration", "never"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never"));
}

#[test]
fn a_duration_past_the_clocks_reach_is_a_one_line_usage_error_for_both_binaries() {
    for secs in ["1e30", "9.3e18"] {
        for out in [trace(&["--duration", secs]), agent(&["--duration", secs])] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{secs}: {stderr}");
            assert!(!stderr.contains("panicked"), "{stderr}");
            assert!(stderr.contains("clock reaches"), "{stderr}");
            assert!(out.stdout.is_empty());
        }
    }
}

#[test]
fn invalid_unit_names_are_usage_errors_that_never_print_control_characters() {
    let long = "a".repeat(300);
    for name in ["", "a/b", "x\u{1b}[2J", long.as_str()] {
        // Colours forced, as on a terminal: what the user typed still comes out escaped.
        for bin in [
            env!("CARGO_BIN_EXE_sockact-trace"),
            env!("CARGO_BIN_EXE_sockact-agent"),
        ] {
            let out = Command::new(bin)
                .args(["--unit", name])
                .env("CLICOLOR_FORCE", "1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name:?}: {stderr}");
            assert!(!stderr.contains('\u{1b}'), "{name:?}: {stderr:?}");
            assert!(stderr.starts_with("error: invalid value"), "{stderr}");
        }
    }
}

#[test]
fn help_lists_the_selectors_and_exits_0() {
    let out = trace(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--all",
        "--pid",
        "--port",
        "--format",
        "--duration",
        "--kernel-log",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn replay_needs_no_root_and_finds_the_recorded_double_bind() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/double_bind_in_use.ndjson"
    );
    let out = trace(&["replay", fixture, "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The double bind, then the port systemd closed after the service's start limit.
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["kind"], "finding");
    assert_eq!(lines[0]["rule"], "double_bind");
    assert_eq!(lines[0]["mode"], "in_use");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[1]["rule"], "listener_lost");
    assert_eq!(lines[1]["seq"], 2);
    // The summary of the replayed stream closes it, with the finding on its socket unit.
    let summary = &lines[2];
    assert_eq!(summary["kind"], "summary");
    assert!(summary["duration_s"].as_f64().unwrap() > 0.0);
    let broken = summary["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["socket_unit"] == "broken.socket")
        .unwrap_or_else(|| panic!("{summary}"));
    assert_eq!(broken["findings"]["double_bind"], 1);
    assert_eq!(broken["unit"], "broken.service");
}

#[test]
fn thresholds_are_set_before_or_after_the_subcommand_and_checked() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/double_bind_in_use.ndjson"
    );
    let out = trace(&["--set", "fds_ignored.after_ms=100", "replay", fixture]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And it takes effect, before the subcommand or after: the recorded cold start of about
    // two seconds is a warning at the default 1000 ms, information at 100000.
    let cold = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/cold_start.ndjson"
    );
    let severity = |args: &[&str]| {
        let out = trace(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["rule"] == "cold_start")
            .map(|v| v["severity"].as_str().unwrap().to_owned())
            .expect("a cold_start finding")
    };
    assert_eq!(severity(&["replay", cold, "--format", "json"]), "warning");
    let raised = "cold_start.warn_ms=100000";
    assert_eq!(
        severity(&["--set", raised, "replay", cold, "--format", "json"]),
        "info"
    );
    assert_eq!(
        severity(&["replay", cold, "--format", "json", "--set", raised]),
        "info"
    );
    let out = trace(&["replay", fixture, "--set", "fds_ignored.after=100"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("fds_ignored.after_ms"),
        "names what is known: {stderr}"
    );
}

#[test]
fn replay_of_a_missing_file_is_a_usage_error() {
    let out = trace(&["replay", "/nonexistent/stream.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/stream.ndjson"), "{stderr}");
}

fn lint_dir(dir: &str) -> String {
    format!("{}/../tests/lint/{dir}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn lint_exits_1_on_a_problem_0_on_a_correct_set_and_takes_format_anywhere() {
    let good = trace(&["lint", &lint_dir("good")]);
    assert_eq!(good.status.code(), Some(0), "{good:?}");
    assert!(good.stdout.is_empty(), "nothing to say about a correct set");
    // --format is global: before the subcommand, or after it.
    let bad = lint_dir("bad");
    for args in [
        ["--format", "json", "lint", &bad],
        ["lint", "--format", "json", &bad],
    ] {
        let out = trace(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a v1 line"))
            .collect();
        assert!(lines.len() >= 10, "{lines:?}");
        assert!(lines.iter().all(|l| l["kind"] == "finding" && l["v"] == 1));
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    }
    let text = trace(&[
        "lint",
        "--format",
        "text",
        &format!("{}/partof.socket", lint_dir("bad")),
    ]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.starts_with(&format!(
            "{}/partof.socket:3: warning partof_on_socket:",
            lint_dir("bad")
        )),
        "{out}"
    );
    // What is often deliberate only with --pedantic, and information only: exit 0.
    let rooty = format!("{}/rooty.socket", lint_dir("bad"));
    let quiet = trace(&["lint", &rooty]);
    assert_eq!(quiet.status.code(), Some(0), "{quiet:?}");
    assert!(quiet.stdout.is_empty(), "{quiet:?}");
    let info = trace(&["lint", "--pedantic", &rooty]);
    assert_eq!(info.status.code(), Some(0), "{info:?}");
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("runs_as_root"),
        "{info:?}"
    );
}

#[test]
fn lint_finds_unit_names_in_the_search_path_and_their_install_state() {
    let out = Command::new(env!("CARGO_BIN_EXE_sockact-trace"))
        .args(["lint", "--format", "json", "lonely"])
        .env("SYSTEMD_UNIT_PATH", lint_dir("installed"))
        .output()
        .expect("running sockact-trace");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["rule"], "socket_not_enabled");
    assert_eq!(line["socket_unit"], "lonely.socket");
    // A name that is nowhere: one line, exit 2.
    let missing = Command::new(env!("CARGO_BIN_EXE_sockact-trace"))
        .args(["lint", "ghost"])
        .env("SYSTEMD_UNIT_PATH", lint_dir("installed"))
        .output()
        .expect("running sockact-trace");
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ghost"), "{stderr}");
}

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sockact-agent"))
        .args(args)
        .output()
        .expect("running sockact-agent")
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("sockact-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_sink_kind_that_is_not_a_string_fails_check_config_naming_kind_and_its_line() {
    let path = temp_config("kind42", "[watch]\nunits = []\n\n[[sink]]\nkind = 42\n");
    let out = agent(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("line 5: kind:"), "{stderr}");
    assert!(
        stderr.contains("journald"),
        "says what kinds there are: {stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_keys_and_a_missing_given_file_are_config_errors() {
    let path = temp_config("unknown", "[metrics]\nenabled = true\nport = 9\n");
    let out = agent(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3: port:"), "{stderr}");
    let out = agent(&["--config", "/nonexistent/agent.toml", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
}

#[test]
fn the_shipped_config_is_valid_documents_every_key_and_states_the_defaults() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/agent.toml");
    let out = agent(&["--config", shipped, "--check-config"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("journald (journald)"), "{summary}");
    assert!(summary.contains("127.0.0.1:9464"), "{summary}");
    let text = std::fs::read_to_string(shipped).unwrap();
    let keys = [
        "units",
        "exclude_units",
        "all_processes",
        "kind",
        "name",
        "path",
        "address",
        "max_size_mb",
        "keep",
        "buffer_events",
        "enabled",
        "listen",
    ];
    // A key at the start of a line, set or shown commented out.
    let documented = |key: &str| {
        text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{key} = "))
        })
    };
    for key in keys {
        assert!(documented(key), "{key} is not documented");
    }
    for kind in sockact_agent::config::SinkKind::NAMES {
        assert!(
            text.contains(&format!("kind = \"{kind}\"")),
            "no example of a {kind} sink"
        );
    }
    let parsed = sockact_agent::config::AgentConfig::parse(&text, shipped).unwrap();
    assert_eq!(
        parsed.thresholds,
        sockact_agent::detect::Thresholds::default(),
        "the rule thresholds shown are the defaults"
    );
    for (rule, key, _) in sockact_agent::detect::thresholds::DEFAULTS {
        assert!(text.contains(&format!("[rules.{rule}]")), "{rule}");
        assert!(documented(key), "{rule}.{key}");
    }
}

#[test]
fn agent_help_lists_its_options() {
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--check-config",
        "--unit",
        "--exclude-unit",
        "--set",
        "--no-metrics",
        "--metrics-listen",
        "--systemd-bus",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn the_shipped_unit_bounds_the_agents_memory_above_what_one_full_sink_may_hold() {
    let unit = include_str!("../../packaging/sockact-agent.service");
    let max = unit
        .lines()
        .find_map(|l| l.strip_prefix("MemoryMax="))
        .expect("the unit sets MemoryMax=");
    let bytes: u64 = match max.trim().strip_suffix('G') {
        Some(g) => g.parse::<u64>().unwrap() << 30,
        None => {
            max.trim()
                .strip_suffix('M')
                .unwrap()
                .parse::<u64>()
                .unwrap()
                << 20
        }
    };
    // One sink at its largest buffer_events, at about 570 bytes an event, fits with room.
    let one_sink = sockact_agent::config::MAX_BUFFER as u64 * 570;
    assert!(
        bytes >= 4 * one_sink,
        "MemoryMax={max} against {one_sink} bytes"
    );
    assert!(bytes <= 4 << 30, "a bound, not a formality: {max}");
}
