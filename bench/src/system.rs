//! What the machine is, and what a process costs (from /proc).

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Context as _, Result};
use serde::Serialize;

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gib = kib_field(&meminfo, "MemTotal:").unwrap_or(0.0) / (1024.0 * 1024.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores ({}), {:.0} GiB, Linux {}",
            self.cores, self.cpu, self.memory_gib, self.kernel
        )
    }
}

fn kib_field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcStats {
    /// User + system CPU seconds since it started.
    pub cpu_s: f64,
    pub rss_mib: f64,
    /// Peak resident set size (VmHWM).
    pub peak_rss_mib: f64,
}

/// Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const USER_HZ: f64 = 100.0;

impl ProcStats {
    pub fn read(pid: u32) -> Result<ProcStats> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
        // Fields after the command name (which may hold spaces) start at field 3 (state).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i - 3).context("stat field")?.parse::<f64>()?) };
        let cpu_s = (ticks(14)? + ticks(15)?) / USER_HZ;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(ProcStats {
            cpu_s,
            rss_mib: kib_field(&status, "VmRSS:").context("VmRSS")? / 1024.0,
            peak_rss_mib: kib_field(&status, "VmHWM:").context("VmHWM")? / 1024.0,
        })
    }
}

/// The process whose program (argv[0]) ends with `program` and whose arguments mention `marker`
/// (e.g. the control plane's directory), if any.
pub fn find_process(program: &str, marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&raw);
            let mut args = cmd.split('\0');
            args.next().is_some_and(|a0| a0.ends_with(program)) && args.any(|a| a.contains(marker))
        })
}

/// Write requests the kube-apiserver counted itself (`apiserver_request_total` on its /metrics,
/// verbs POST, PUT, PATCH, APPLY and DELETE, every response code), per "VERB resource" or
/// "VERB resource/subresource".
pub fn apiserver_writes(metrics: &str) -> BTreeMap<String, u64> {
    const WRITES: [&str; 5] = ["POST", "PUT", "PATCH", "APPLY", "DELETE"];
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix("=\"")?.strip_suffix('"'))
                .unwrap_or("")
        };
        let verb = label("verb");
        if !WRITES.contains(&verb) {
            continue;
        }
        let key = match label("subresource") {
            "" => format!("{verb} {}", label("resource")),
            sub => format!("{verb} {}/{sub}", label("resource")),
        };
        *out.entry(key).or_default() += value as u64;
    }
    out
}

/// `after - before`, without the keys that did not move.
pub fn counts_between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_apiserver_writes_by_verb_and_resource() {
        let text = r#"# HELP apiserver_request_total x
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="macie.kubeops.dev",resource="maciejobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="macie.kubeops.dev",resource="maciejobs",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 1
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="namespace",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 9
apiserver_request_duration_seconds_count{verb="PATCH",resource="maciejobs"} 5
"#;
        let w = apiserver_writes(text);
        assert_eq!(w.len(), 2, "{w:?}");
        assert_eq!(w["PATCH maciejobs/status"], 8);
        assert_eq!(w["POST events"], 3);
        let mut later = w.clone();
        *later.get_mut("POST events").unwrap() += 2;
        let d = counts_between(&w, &later);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec![("POST events".to_string(), 2)]);
    }

    #[test]
    fn reads_this_process() {
        let s = ProcStats::read(std::process::id()).unwrap();
        assert!(s.rss_mib > 0.0 && s.peak_rss_mib >= s.rss_mib);
        assert!(s.cpu_s >= 0.0);
        assert!(Machine::read().cores >= 1);
        // This test binary itself is found by its name (argv[0] is its path).
        let me = std::env::current_exe().unwrap();
        let name = me.file_name().unwrap().to_str().unwrap();
        assert!(find_process(name, "").is_some());
        assert_eq!(find_process("no-such-program-anywhere", ""), None);
    }
}
