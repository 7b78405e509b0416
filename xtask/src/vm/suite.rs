//! What runs on each kernel of the matrix: the kernel tests' core cases, one end-to-end scenario
//! per rule with its healthy control, on that kernel's systemd. The host kernel runs the whole
//! suite.

/// Core kernel cases: every family attaches (or its tracepoint does not exist), the events of
/// each family, the accept queue and its drops, connect outcomes.
const KERNEL: &[&str] = &[
    "every_program_attaches_or_its_tracepoint_does_not_exist",
    "all_mode_sees_bind_listen_connect_accept_and_exec",
    "socket_activated_service_binding_its_own_port_is_seen_with_its_listen_fds",
    "a_process_that_exits_right_after_exec_keeps_its_listen_fds",
    "addresses_of_every_family_reuseport_and_listener_shutdown",
    "a_watched_listeners_queue_its_drops_and_each_accepts_wait",
    "a_non_blocking_connect_reports_its_outcome",
];

/// One scenario per runtime rule, and the healthy control, on the VM's own systemd.
const SYSTEMD: &[&str] = &[
    "healthy_activation_is_seen_with_namespace_aware_pids",
    "unit_selector_resolves_both_sockets_attributes_and_follows_a_restart",
    "a_service_binding_its_own_port_is_a_double_bind",
    "a_second_listener_with_reuseport_and_a_rebound_unix_path_are_double_binds",
    "a_restart_under_load_is_a_gap_and_a_full_backlog_drops_exactly_what_the_kernel_counted",
    "a_restart_under_load_behind_a_backlog_of_16_drops_what_the_kernel_counted",
    "a_slow_start_is_a_cold_start_timed_from_the_first_queued_connection",
    "a_proxy_that_accepts_before_its_backend_listens_and_a_guarded_one",
    "restart_always_services_that_die_at_start_or_exit_when_idle_are_crash_loops",
    "a_service_that_closes_fd_3_and_serves_elsewhere_ignores_its_fds",
    "wrappers_that_fork_the_server_are_listen_pid_mismatches_and_workers_are_not",
    "two_listen_lines_in_one_socket_unit_share_one_fd_name",
    "a_service_that_exits_at_start_while_a_client_waits_failed_its_activation",
    "a_service_started_while_its_socket_is_stopped_runs_without_it",
    "a_socket_part_of_its_service_a_shut_down_listener_and_a_reload_are_lost_listeners",
];

/// The driver, run by a oneshot unit once the VM's systemd has started its sockets. It writes
/// to the second serial port, the host's clean channel out, and ends with the number of test
/// binaries that failed.
/// With `filters`, both test binaries run what matches them instead.
pub fn driver(opt: &str, series: &str, filters: &[String]) -> String {
    let list = |names: &[&str]| {
        if filters.is_empty() {
            format!("--exact {}", names.join(" "))
        } else {
            filters.join(" ")
        }
    };
    format!(
        r#"#!/bin/sh
exec >/dev/ttyS1 2>&1
stty -F /dev/ttyS1 -opost 2>/dev/null
echo "sockact-vm: kernel {series}: $(uname -r)"
export SOCKACT_TESTBED=pid1 SOCKACT_TRACE_BIN={opt}/bin/sockact-trace SOCKACT_SCENARIOS={opt}/scenarios
export RUST_BACKTRACE=1 HOME=/root
# One emulated CPU, several times slower than a native one: waits scale, and a healthy python
# service's start-up (over a second here) is not a slow cold start or restart.
export SOCKACT_TEST_SLOWDOWN=3 SOCKACT_TEST_SET=cold_start.warn_ms=10000,restart_gap.warn_ms=10000
# The emulator translates code the first time it runs: python's, before any test times it.
python3 -c "import socket, os, sys, time, selectors" 2>/dev/null
failed=0
{opt}/bin/kernel --test-threads=1 {kernel} || failed=$((failed + 1))
{opt}/bin/systemd --test-threads=1 {systemd} || failed=$((failed + 1))
echo "sockact-vm: result $failed"
"#,
        kernel = list(KERNEL),
        systemd = list(SYSTEMD),
    )
}
