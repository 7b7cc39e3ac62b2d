//! The operator binary's command line: help, CRD output, and clear errors for bad flags.

use std::process::Command;

fn operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_macie-operator"))
        .args(args)
        .env_remove("MACIE_OPERATOR_POLL_INTERVAL")
        .output()
        .expect("run macie-operator")
}

#[test]
fn help_lists_the_subcommands_and_run_flags() {
    let out = operator(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("crd"), "{text}");
    let out = operator(&["run", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--region",
        "--macie-endpoint",
        "--poll-interval",
        "--namespace",
        "--metrics-addr",
        "--metrics-secure",
        "MACIE_OPERATOR_METRICS_SECURE",
        "--metrics-cert-dir",
        "--health-addr",
        "MACIE_OPERATOR_HEALTH_ADDR",
        "MACIE_OPERATOR_REGION",
        "--lease-renew-deadline",
        "MACIE_OPERATOR_LEASE_RENEW_DEADLINE",
        "--aws-attempt-timeout",
        "MACIE_OPERATOR_AWS_ATTEMPT_TIMEOUT",
        "--aws-operation-timeout",
        "MACIE_OPERATOR_AWS_OPERATION_TIMEOUT",
    ] {
        assert!(text.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn crd_prints_the_committed_crds() {
    let out = operator(&["crd"]);
    assert!(out.status.success());
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/macie.kubeops.dev.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), committed, "run `make crds`");
}

#[test]
fn bad_flags_are_clear_errors_not_panics() {
    for (args, needle) in [
        (vec!["run", "--poll-interval", "soon"], "--poll-interval"),
        (vec!["run", "--poll-interval", "0"], "greater than zero"),
        (vec!["run", "--macie-endpoint", "localhost:4566"], "--macie-endpoint"),
        (vec!["run", "--page-size", "0"], "--page-size"),
        (vec!["run", "--log-format", "xml"], "--log-format"),
        (vec!["run", "--metrics-addr", "nowhere"], "--metrics-addr"),
        (vec!["run", "--health-addr", "nowhere"], "--health-addr"),
        (vec!["run", "--metrics-cert-dir", "/etc/certs"], "--metrics-secure"),
        (vec!["run", "--log", "info,=[bad"], "log filter"),
        (vec!["run", "--aws-attempt-timeout", "0"], "--aws-attempt-timeout"),
        (
            vec!["run", "--aws-operation-timeout", "later"],
            "--aws-operation-timeout",
        ),
        (
            vec!["run", "--leader-elect", "--lease-renew-deadline", "15s"],
            "--lease-renew-deadline (15s) must be shorter than --lease-duration (15s)",
        ),
        (
            vec![
                "run",
                "--leader-elect",
                "--lease-duration",
                "6s",
                "--lease-renew-deadline",
                "8s",
            ],
            "must be shorter than --lease-duration (6s)",
        ),
        (
            vec!["run", "--leader-elect", "--lease-renew-deadline", "1s"],
            "must be longer than the retry period",
        ),
    ] {
        let out = operator(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    // The same checks apply to the environment variables behind the flags.
    for (var, value, needle) in [
        ("MACIE_OPERATOR_POLL_INTERVAL", "soon", "--poll-interval"),
        ("MACIE_OPERATOR_PAGE_SIZE", "-5", "--page-size"),
        ("MACIE_OPERATOR_DISCOVERY_BATCH_SIZE", "0", "--discovery-batch-size"),
        ("MACIE_OPERATOR_LOG_FORMAT", "yaml", "--log-format"),
        ("MACIE_OPERATOR_LEASE_DURATION", "forever", "--lease-duration"),
        ("MACIE_OPERATOR_LEASE_RENEW_DEADLINE", "soon", "--lease-renew-deadline"),
        ("MACIE_OPERATOR_AWS_ATTEMPT_TIMEOUT", "-1", "--aws-attempt-timeout"),
        ("MACIE_OPERATOR_AWS_OPERATION_TIMEOUT", "0s", "--aws-operation-timeout"),
        ("MACIE_OPERATOR_HEALTH_ADDR", "nowhere", "--health-addr"),
        ("MACIE_OPERATOR_METRICS_SECURE", "maybe", "--metrics-secure"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_macie-operator"))
            .arg("run")
            .env(var, value)
            .output()
            .expect("run macie-operator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value} should fail");
        assert!(err.contains(needle), "{var}={value}: {err}");
        assert!(!err.contains("panicked"), "{var}={value} panicked: {err}");
    }
}
