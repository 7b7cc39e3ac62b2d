//! The Helm chart and the tools the tests drive it with (helm, kubectl from `make tools`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use testkit::workspace_root;

pub fn tool(name: &str) -> PathBuf {
    workspace_root().join(".cache/tools/bin").join(name)
}

pub fn chart() -> PathBuf {
    workspace_root().join("charts/macie-operator")
}

/// Runs a command; returns stdout, or fails with its stderr.
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Result<String> {
    run_with_stderr(cmd, stdin).map(|(out, _)| out)
}

/// Runs a command; returns stdout and stderr (where kubectl prints API warnings), or fails with
/// its stderr.
pub fn run_with_stderr(cmd: &mut Command, stdin: Option<&str>) -> Result<(String, String)> {
    let mut child = cmd
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {cmd:?}"))?;
    if let Some(input) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub fn helm(kubeconfig: &Path) -> Command {
    let mut c = Command::new(tool("helm"));
    c.env("KUBECONFIG", kubeconfig)
        .env("HELM_CACHE_HOME", std::env::temp_dir().join("macie-helm-cache"))
        .env("HELM_CONFIG_HOME", std::env::temp_dir().join("macie-helm-config"))
        .env("HELM_DATA_HOME", std::env::temp_dir().join("macie-helm-data"));
    c
}

pub fn kubectl(kubeconfig: &Path) -> Command {
    let mut c = Command::new(tool("kubectl"));
    c.env("KUBECONFIG", kubeconfig);
    c
}
