//! The alerts and the dashboard, tested with the real tools: the rules the chart renders pass
//! `promtool check rules` and the unit tests in tests/alerts/ (`promtool test rules`); the
//! PrometheusRule renders exactly those rules and the dashboard ConfigMap passes a server-side
//! dry run; every metric the rules and the dashboard query is one a running operator exports.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kube::api::{Api, DeleteParams};
use macie_operator::api::MacieJob;
use serde_json::{Value, json};
use support::*;
use testkit::{wait_for, workspace_root};

fn tool(name: &str) -> PathBuf {
    workspace_root().join(".cache/tools/bin").join(name)
}

fn chart() -> PathBuf {
    workspace_root().join("charts/macie-operator")
}

/// Runs a command; returns stdout, or fails with its output.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One YAML document as JSON.
fn yaml(text: &str) -> Result<Value> {
    Ok(serde_saphyr::from_str(text)?)
}

/// `helm template` of one of the chart's templates with `--set` values.
fn render(template: &str, set: &[&str]) -> Result<Value> {
    let mut helm = Command::new(tool("helm"));
    helm.args([
        "template",
        "macie",
        chart().to_str().unwrap(),
        "--namespace",
        "macie-system",
    ])
    .args(["--show-only", template]);
    for s in set {
        helm.args(["--set", s]);
    }
    yaml(&run(&mut helm)?)
}

/// The rules as the chart renders them with its default values: what promtool checks.
fn checked_rules() -> Result<Value> {
    let rule = render(
        "templates/prometheusrule.yaml",
        &["metrics.prometheusRule.enabled=true"],
    )?;
    Ok(json!({"groups": rule["spec"]["groups"]}))
}

/// Every alert of `rules`: (name, the rule).
fn alerts(rules: &Value) -> Vec<(String, Value)> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| Some((r["alert"].as_str()?.to_string(), r)))
        .collect()
}

fn promtool() -> Command {
    Command::new(tool("promtool"))
}

#[test]
fn promtool_checks_and_unit_tests_the_rules_the_chart_renders() -> Result<()> {
    let rules = checked_rules()?;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("alerts");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // JSON is YAML: promtool reads the rendered groups as they are.
    let file = dir.join("prometheus-rules.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&rules)?)?;
    let checked = run(promtool().args(["check", "rules", file.to_str().unwrap()]))?;
    let names = alerts(&rules);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{checked}"
    );

    // The unit tests, one file per alert, next to the rendered rules they name.
    let tests_dir = workspace_root().join("tests/alerts");
    let mut tests = Vec::new();
    for (name, _) in &names {
        let test = tests_dir.join(format!("{name}.test.yaml"));
        let text = std::fs::read_to_string(&test).with_context(|| format!("{name} has no unit test file"))?;
        assert!(
            text.contains(&format!("alertname: {name}")),
            "{test:?} tests another alert"
        );
        assert!(
            text.contains("exp_alerts: []"),
            "{test:?} has no case where {name} does not fire"
        );
        assert!(text.contains("exp_labels:"), "{test:?} has no case where {name} fires");
        let copy = dir.join(test.file_name().unwrap());
        std::fs::copy(&test, &copy)?;
        tests.push(copy);
    }
    let out = run(promtool().args(["test", "rules"]).args(&tests))?;
    assert_eq!(out.matches("  SUCCESS").count(), tests.len(), "{out}");

    // Each alert: a summary, a description (the unit tests show them naming the resource), and a
    // runbook section it links to.
    let runbook = std::fs::read_to_string(workspace_root().join("docs/runbook.md"))?;
    let base = "https://github.com/kubeops/macie-operator/blob/main/docs/runbook.md";
    for (name, rule) in &names {
        let a = &rule["annotations"];
        assert!(a["summary"].as_str().is_some_and(|s| !s.is_empty()), "{name}: summary");
        assert!(
            a["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: description"
        );
        assert_eq!(a["runbook_url"], format!("{base}#{}", name.to_lowercase()), "{name}");
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/runbook.md has no section {name}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_renders_the_checked_rules_and_a_dashboard_configmap_the_api_server_accepts() -> Result<()> {
    let both = ["metrics.prometheusRule.enabled=true", "metrics.dashboard.enabled=true"];
    // Off by default.
    let mut helm = Command::new(tool("helm"));
    let all = run(helm.args(["template", "macie", chart().to_str().unwrap()]))?;
    assert!(
        !all.contains("kind: PrometheusRule") && !all.contains("grafana_dashboard"),
        "{all}"
    );

    // The PrometheusRule's groups are exactly what promtool checked.
    let rule = render("templates/prometheusrule.yaml", &both)?;
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(json!({"groups": rule["spec"]["groups"]}), checked_rules()?);

    // The values reach the rules.
    let tuned = render(
        "templates/prometheusrule.yaml",
        &[
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.stalledFor=2h",
            "metrics.prometheusRule.labels.release=kps",
            "leaderElection.leaseDuration=1m",
            "operator.expiryWarning=3d",
        ],
    )?;
    let tuned_rules = json!({"groups": tuned["spec"]["groups"]});
    let rule_of = |name: &str| alerts(&tuned_rules).into_iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(tuned["metadata"]["labels"]["release"], "kps");
    assert_eq!(rule_of("MacieResourceStalled")["for"], "2h");
    assert_eq!(rule_of("MacieOperatorNoLeader")["for"], "2m");
    assert!(
        rule_of("MacieJobPauseExpiring")["expr"]
            .as_str()
            .unwrap()
            .ends_with("< 259200")
    );

    // The dashboard ConfigMap: the dashboard file as is, the sidecar label, and valid for the
    // API server.
    let cm = render("templates/dashboard.yaml", &both)?;
    let dashboard = std::fs::read_to_string(chart().join("files/dashboard.json"))?;
    assert_eq!(cm["data"]["macie-operator.json"].as_str(), Some(dashboard.trim_end()));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let cp = control_plane().await?;
    let client = cp.client().await?;
    namespace(&client, "macie-system").await?;
    let mut kubectl = Command::new(tool("kubectl"));
    kubectl
        .env("KUBECONFIG", cp.kubeconfig())
        .args(["apply", "--dry-run=server", "-o", "name", "-f", "-"]);
    let out = run_with_input(&mut kubectl, &serde_json::to_string(&cm)?)?;
    assert_eq!(out.trim(), "configmap/macie-macie-operator-dashboard");
    Ok(())
}

fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every PromQL expression of the dashboard.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    exprs.push(e.clone());
                }
                stack.extend(m.values());
            }
            Value::Array(a) => stack.extend(a),
            _ => {}
        }
    }
    exprs
}

/// Pure: the metric names a PromQL expression selects: identifiers outside strings, label
/// matchers (`{...}`), ranges (`[...]`) and the label lists of `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right`, that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "offset",
        "bool",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening character to its closing one, over strings.
    let skip = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                q @ ('"' | '\'' | '`') => {
                    i += 1;
                    while i < chars.len() && chars[i] != q {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip(i, '{', '}');
        } else if c == '[' {
            i = skip(i, '[', ']');
        } else if matches!(c, '"' | '\'' | '`') {
            i = skip(i, c, c);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) && call {
                i = skip(next, '(', ')');
            } else if !call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 0.99, 1e3).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_of_promql() {
    let rows: &[(&str, &[&str])] = &[
        ("macie_operator_leader", &["macie_operator_leader"]),
        (
            "max without (instance, pod) (macie_operator_leader) < 1 or absent(macie_operator_leader)",
            &["macie_operator_leader"],
        ),
        (
            "sum by (kind) (rate(macie_operator_reconciles_total[$__rate_interval]))",
            &["macie_operator_reconciles_total"],
        ),
        (
            "histogram_quantile(0.99, sum by (kind, le) (rate(macie_operator_reconcile_duration_seconds_bucket[5m])))",
            &["macie_operator_reconcile_duration_seconds_bucket"],
        ),
        (
            r#"macie_operator_resources{reason=~"macie_operator_nothing|NotPermitted", kind!="x{y}"} > 0"#,
            &["macie_operator_resources"],
        ),
        (
            "macie_operator_paused_job_expiry_timestamp_seconds - time() < 604800",
            &["macie_operator_paused_job_expiry_timestamp_seconds"],
        ),
        (
            "a / on (region) group_left (status) b offset 5m unless c{x=\"1\"} == bool 2e3",
            &["a", "b", "c"],
        ),
        ("up == 0", &["up"]),
        ("sum(rate(x[5m])) by (job)", &["x"]),
    ];
    for (expr, want) in rows {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), want, "{expr}");
    }
}

/// The sample names a /metrics exposition declares: a counter's `_total`, a histogram's
/// `_bucket`, `_sum` and `_count`, a gauge's own name.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => names.extend([format!("{name}_total")]),
            "histogram" => names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}"))),
            _ => names.extend([name.to_string()]),
        }
    }
    names
}

async fn scrape(port: u16) -> Result<String> {
    let (status, body) = testkit::http_get(port, "/metrics").await?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(body)
}

/// The samples of `name` in an exposition.
fn samples<'a>(exposition: &'a str, name: &str) -> Vec<&'a str> {
    exposition
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_the_rules_and_the_dashboard_query_is_exported_by_the_operator() -> Result<()> {
    let Scene { cp, client, ns, emu } = scene("alerts").await?;
    let job = emu.put_job(json!({"name": "alerts-job", "jobType": "ONE_TIME", "jobStatus": "RUNNING"}));
    let api: Api<MacieJob> = Api::namespaced(client.clone(), &ns);
    create_job(&api, "paused", json!({"jobId": job, "jobStatus": "USER_PAUSED"})).await?;
    create_job(
        &api,
        "missing",
        json!({"jobName": "no-such-job", "jobStatus": "RUNNING"}),
    )
    .await?;
    let op = OperatorProcess::spawn("alerts", cp.kubeconfig(), &ns, &emu.url, &[])?;
    wait_reason(&api, "paused", "Converged", Duration::from_secs(60)).await?;

    // The status write put both resources in the gauges, and the paused job's expiry.
    let expiry = "macie_operator_paused_job_expiry_timestamp_seconds";
    let text = wait_for("the resource gauges", Duration::from_secs(30), || async {
        let text = scrape(op.metrics_port).await?;
        let resources = samples(&text, "macie_operator_resources");
        let ok = resources
            .iter()
            .any(|l| l.contains(r#"reason="Converged""#) && l.contains(&ns))
            && resources.iter().any(|l| l.contains(r#"reason="JobNotFound""#))
            && samples(&text, expiry)
                .iter()
                .any(|l| l.contains(r#"resource_name="paused""#));
        Ok(ok.then_some(text))
    })
    .await?;

    // Every name the rules and the dashboard query.
    let exported = exported_names(&text);
    let rules = checked_rules()?;
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(chart().join("files/dashboard.json"))?)?;
    let exprs: Vec<String> = alerts(&rules)
        .iter()
        .filter_map(|(_, r)| r["expr"].as_str().map(str::to_string))
        .chain(dashboard_exprs(&dashboard))
        .collect();
    assert!(exprs.len() >= 6 + 10, "{exprs:?}");
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric in {e}");
        used.extend(names);
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "not exported by the operator: {missing:?}\n{text}");

    // A deleted resource leaves the gauges.
    api.delete("paused", &DeleteParams::default()).await?;
    wait_for(
        "the deleted resource to leave the gauges",
        Duration::from_secs(30),
        || async {
            let text = scrape(op.metrics_port).await?;
            let gone = samples(&text, expiry).is_empty()
                && !samples(&text, "macie_operator_resources")
                    .iter()
                    .any(|l| l.contains(r#"reason="Converged""#) && l.contains(&ns));
            Ok(gone.then_some(()))
        },
    )
    .await?;
    Ok(())
}
