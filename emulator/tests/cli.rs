//! The emulator binary: help, bad seeds and addresses are clear errors with exit status 2.

use std::process::Command;

fn emulator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_macie-emulator"))
        .args(args)
        .output()
        .expect("run macie-emulator")
}

#[test]
fn help_documents_addr_and_seed() {
    let out = emulator(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--addr") && text.contains("--seed"), "{text}");
}

#[test]
fn bad_seed_and_addr_exit_2_naming_the_problem() {
    let dir = std::env::temp_dir().join(format!("emu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "jobs:\n- {name: x, jobType: ONE_TIME, jobStatus: IDLE}\n").unwrap();
    for (args, needle) in [
        (
            vec!["--seed", bad.to_str().unwrap(), "--addr", "127.0.0.1:0"],
            "jobs[0].jobStatus",
        ),
        (
            vec!["--seed", "/nonexistent/seed.yaml", "--addr", "127.0.0.1:0"],
            "/nonexistent/seed.yaml",
        ),
        (vec!["--addr", "not-an-address"], "not-an-address"),
    ] {
        let out = emulator(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
