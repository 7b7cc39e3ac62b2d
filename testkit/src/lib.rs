//! Test support for macie-operator: a real local control plane (etcd + kube-apiserver built by
//! `make tools`) and helpers to wait on conditions with a deadline.
//!
//! Every child process runs under a small `sh` guard that holds the read end of a pipe: when
//! the test process exits for any reason (even SIGKILL) the pipe closes and the guard stops the
//! child, so no etcd or kube-apiserver outlives its test.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The Kubernetes version `make tools` builds (kept in step with hack/versions.env).
pub const KUBE_VERSION: &str = "v1.36.3";

/// Root of the workspace (where `.cache/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is a workspace member")
        .to_path_buf()
}

/// Directory holding `etcd` and `kube-apiserver`: `$MACIE_TEST_ASSETS`, else the one
/// `make tools` fills.
pub fn assets_dir() -> PathBuf {
    std::env::var_os("MACIE_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join(".cache")
                .join(format!("controlplane-{KUBE_VERSION}"))
                .join("bin")
        })
}

/// A free TCP port on 127.0.0.1 (bound and released). It is taken below the kernel's ephemeral
/// range when possible, so that outgoing connections and `:0` listeners of other tests do not
/// grab it before its user binds it; `ControlPlane::start` also retries on a bind race.
pub fn free_port() -> Result<u16> {
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    if ephemeral_start > 20000 {
        // A pseudo-random start (time and pid), then the first port that binds.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id().wrapping_mul(2_654_435_761);
        let span = u32::from(ephemeral_start - 20000);
        for i in 0..200 {
            let port = 20000 + ((seed.wrapping_add(i * 7919)) % span) as u16;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l.local_addr()?.port());
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `check` until it returns `Ok(Some(v))` or `deadline` passes; the error names `what`
/// and carries the last error seen.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > deadline {
            match last_err {
                Some(e) => bail!("timed out after {deadline:?} waiting for {what}: last error: {e:#}"),
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL after 2 s) when this handle is
/// dropped or when the test process dies.
pub struct Guarded {
    name: String,
    guard: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Guarded {
    /// Starts `program args` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Guarded> {
        Guarded::spawn_with_cleanup(name, program, args, log, None)
    }

    /// Like `spawn`; once the child has stopped, the guard also removes `cleanup`.
    pub fn spawn_with_cleanup(
        name: &str,
        program: &Path,
        args: &[String],
        log: &Path,
        cleanup: Option<&Path>,
    ) -> Result<Guarded> {
        let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        // The guard shell starts the child, then blocks reading its stdin; EOF (our end closed,
        // normally or because we died), SIGTERM or SIGHUP make it stop the child and wait for
        // it. It ignores SIGINT, which a terminal's Ctrl-C sends to the whole process group.
        let script = r#""$@" & pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null
  ( sleep 2; kill -KILL "$pid" 2>/dev/null ) &
  killer=$!
  wait "$pid"
  kill "$killer" 2>/dev/null
  # A control plane held in a static is never dropped: its guard removes its directory.
  if [ -n "${GUARD_CLEANUP:-}" ]; then rm -rf "$GUARD_CLEANUP"; fi
  exit 0
}
# Ctrl-C reaches the whole process group: the owner decides when to stop (by closing the pipe).
trap '' INT
trap stop TERM HUP
read -r _ || true
stop"#;
        let mut cmd = Command::new("sh");
        if let Some(dir) = cleanup {
            cmd.env("GUARD_CLEANUP", dir);
        }
        let mut child = cmd
            .arg("-c")
            .arg(script)
            .arg("guard")
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {name} ({})", program.display()))?;
        let stdin = child.stdin.take();
        Ok(Guarded {
            name: name.to_string(),
            guard: Some(child),
            stdin,
            log: log.to_path_buf(),
        })
    }

    /// Whether the guard (and so the child) has exited.
    pub fn exited(&mut self) -> bool {
        self.guard.as_mut().is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// The last `lines` lines of the child's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the child and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        if let Some(mut g) = self.guard.take() {
            let _ = g.wait();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// etcd + kube-apiserver on free loopback ports, with an admin kubeconfig.
pub struct ControlPlane {
    // Field order is drop order: the API server stops before etcd, then the directory goes.
    apiserver: Guarded,
    etcd: Guarded,
    /// kube-apiserver's program and arguments, to start it again after `stop_apiserver`.
    apiserver_cmd: (PathBuf, Vec<String>),
    apiserver_starts: u32,
    kubeconfig: PathBuf,
    server: String,
    dir: tempfile::TempDir,
}

struct Pki {
    ca_pem: String,
    files: Vec<(&'static str, String)>,
    client_cert: String,
    client_key: String,
}

/// A new test CA: its certificate and what signs with it.
fn test_ca() -> Result<(rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "macie-operator-test-ca");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    Ok((ca_cert, Issuer::new(ca, ca_key)))
}

/// A serving certificate for `localhost` and `127.0.0.1` signed by `issuer`, and its key.
fn serving_cert(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    common_name: &str,
) -> Result<(rcgen::Certificate, rcgen::KeyPair)> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok((params.signed_by(&key, issuer)?, key))
}

/// Writes `tls.crt` and `tls.key` (a serving certificate for `localhost` and `127.0.0.1`, as a
/// `kubernetes.io/tls` Secret holds them) into `dir`, signed by a new CA; returns the CA's PEM.
pub fn write_serving_cert(dir: &Path) -> Result<String> {
    let (ca, issuer) = test_ca()?;
    let (cert, key) = serving_cert(&issuer, "macie-operator-metrics")?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca.pem())
}

fn make_pki() -> Result<Pki> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let (ca_cert, issuer) = test_ca()?;
    let (serving_cert, serving_key) = serving_cert(&issuer, "kube-apiserver")?;

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, "test-admin");
    client
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let sa_key = KeyPair::generate()?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        files: vec![
            ("ca.crt", ca_cert.pem()),
            ("apiserver.crt", serving_cert.pem()),
            ("apiserver.key", serving_key.serialize_pem()),
            ("sa.key", sa_key.serialize_pem()),
            ("sa.pub", sa_key.public_key_pem()),
        ],
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    })
}

fn b64(data: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits (up to 90 s) until /readyz answers ok. A port
    /// taken between choosing it and binding it is retried with new ports (up to 3 attempts).
    pub async fn start() -> Result<ControlPlane> {
        let mut attempt = 1;
        loop {
            match ControlPlane::start_once().await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("testkit: control plane start-up lost a port race ({attempt}/3), retrying: {e:#}");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    async fn start_once() -> Result<ControlPlane> {
        let bin = assets_dir();
        for b in ["etcd", "kube-apiserver"] {
            if !bin.join(b).is_file() {
                bail!(
                    "{} not found: run `make tools` first (or set MACIE_TEST_ASSETS)",
                    bin.join(b).display()
                );
            }
        }
        let dir = tempfile::Builder::new().prefix("macie-cp-").tempdir()?;
        let d = dir.path();
        let pki = make_pki()?;
        for (name, pem) in &pki.files {
            std::fs::write(d.join(name), pem)?;
        }

        let (client_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Guarded::spawn_with_cleanup(
            "etcd",
            &bin.join("etcd"),
            &[
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            &d.join("etcd.log"),
            Some(d),
        )?;
        let p = |name: &str| d.join(name).display().to_string();
        let apiserver_args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--cert-dir={}", p("certs")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            // No controller-manager runs, so nothing would create ServiceAccount tokens.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--v=0".into(),
        ];
        let apiserver = Guarded::spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            &apiserver_args,
            &d.join("kube-apiserver.log"),
        )?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = d.join("kubeconfig");
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: admin\n    namespace: default\ncurrent-context: local\n",
            b64(&pki.ca_pem),
            b64(&pki.client_cert),
            b64(&pki.client_key),
        );
        std::fs::write(&kubeconfig, cfg)?;
        let mut cp = ControlPlane {
            apiserver,
            etcd,
            apiserver_cmd: (bin.join("kube-apiserver"), apiserver_args),
            apiserver_starts: 1,
            kubeconfig,
            server,
            dir,
        };
        cp.wait_ready(Duration::from_secs(90)).await?;
        Ok(cp)
    }

    async fn wait_ready(&mut self, deadline: Duration) -> Result<()> {
        let client = self.client().await?;
        let start = Instant::now();
        loop {
            for g in [&mut self.etcd, &mut self.apiserver] {
                // The guard outlives its child, so a child that failed to bind shows in its log.
                let tail = g.log_tail(30);
                if g.exited() || tail.contains("address already in use") {
                    bail!("{} exited during start-up; its log ends with:\n{tail}", g.name());
                }
            }
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if let Ok(body) = client.request_text(req).await
                && body.trim() == "ok"
            {
                return Ok(());
            }
            if start.elapsed() > deadline {
                bail!(
                    "kube-apiserver not ready after {deadline:?}; its log ends with:\n{}",
                    self.apiserver.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Path of the admin kubeconfig (usable by kubectl, helm and the operator binary).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Scratch directory that lives as long as the control plane.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig (written into `dir()` as `<name>-kubeconfig`) that reaches this API server
    /// with `token` (e.g. a ServiceAccount's, from `service_account_token`).
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> Result<PathBuf> {
        let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&self.kubeconfig)?)?;
        let ca = admin["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .context("the admin kubeconfig has no CA")?;
        let path = self.dir().join(format!("{name}-kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: local\n  context: {{cluster: local, user: {name}}}\ncurrent-context: local\n",
                self.server,
                token.trim()
            ),
        )?;
        Ok(path)
    }

    /// An admin `kube::Client`.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops kube-apiserver only (etcd keeps the data): clients see connection errors until
    /// `start_apiserver`.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
    }

    /// Starts kube-apiserver again on the same address, with the same certificates and etcd, and
    /// waits (up to 90 s) until it is ready.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        self.apiserver_starts += 1;
        let log = self.dir().join(format!("kube-apiserver-{}.log", self.apiserver_starts));
        let (program, args) = &self.apiserver_cmd;
        self.apiserver = Guarded::spawn("kube-apiserver", program, args, &log)?;
        self.wait_ready(Duration::from_secs(90)).await
    }

    /// Stops both processes now (also done on drop).
    pub fn stop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
    }
}

/// Applies CRDs (server-side apply) and waits (up to 30 s each) until they are established.
pub async fn install_crds(
    cp: &ControlPlane,
    crds: impl IntoIterator<
        Item = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >,
) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(cp.client().await?);
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("testkit").force(), &Patch::Apply(&crd))
            .await?;
        wait_for(&format!("CRD {name} established"), Duration::from_secs(30), || async {
            let c = api.get(&name).await?;
            let ok = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(ok.then_some(()))
        })
        .await?;
    }
    Ok(())
}

/// Creates a namespace; returns its name.
pub async fn create_namespace(client: &kube::Client, name: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ObjectMeta, PostParams};
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(name.to_string())
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port` (an operator's admin server): (status, body).
pub async fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let status = resp.get(9..12).unwrap_or("0").parse()?;
    let body = resp.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Creates the ServiceAccount `ns`/`name` unless it exists, and returns a token for it from the
/// TokenRequest API (valid for an hour, for the API server's own audience).
pub async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use kube::api::{Api, ObjectMeta, PostParams};
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    if api.get_opt(name).await?.is_none() {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &sa)
            .await
            .with_context(|| format!("create ServiceAccount {ns}/{name}"))?;
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {ns}/{name}"))?;
    issued
        .status
        .and_then(|s| s.token)
        .context("the TokenRequest has no token")
}

/// An HTTPS GET on 127.0.0.1:`port` that trusts only the CA `ca_pem` (and checks the
/// certificate is for 127.0.0.1), with `Authorization: Bearer <bearer>` when given: (status,
/// body).
pub async fn https_get(port: u16, path: &str, ca_pem: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    use http_body_util::BodyExt as _;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(rustls::pki_types::ServerName::try_from("127.0.0.1")?, tcp)
        .await
        .context("TLS handshake")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    let conn = tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", format!("127.0.0.1:{port}"));
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let resp = sender
        .send_request(req.body(http_body_util::Empty::<hyper::body::Bytes>::new())?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
