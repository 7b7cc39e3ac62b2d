//! AWS call budgets: a Macie endpoint that accepts the TCP connection but never answers makes
//! a call fail with a timeout (MacieError::Uncertain, code "Timeout") within the configured
//! attempt and operation timeouts, instead of hanging a sweep or a reconcile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use aws_sdk_macie2::config::{BehaviorVersion, Credentials, Region};
use macie_operator::macie::{AwsTimeouts, MacieClients, MacieError};

/// A server that accepts every connection and holds it open without reading or answering.
/// Returns its URL and the number of connections accepted so far.
async fn silent_server() -> Result<(String, Arc<AtomicUsize>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(socket);
        }
    });
    Ok((url, accepted))
}

async fn clients(endpoint: &str, timeouts: AwsTimeouts) -> MacieClients {
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("AKIDTEST", "secret", None, None, "test"))
        .http_client(macie_operator::macie::http_client())
        .load()
        .await;
    let c = MacieClients::new(sdk, Some(endpoint.to_string())).with_timeouts(timeouts);
    c.use_account("default", None);
    c
}

/// Calls ListClassificationJobs; the outer deadline only keeps a broken build from hanging.
async fn list_jobs(c: &MacieClients) -> Result<(Result<(), MacieError>, Duration)> {
    let start = Instant::now();
    let call = c
        .client(&macie_operator::macie::Place::new("default", "us-east-1"))?
        .list_classification_jobs()
        .send();
    let r = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .map_err(|_| anyhow::anyhow!("the call did not end within 60 s: no timeout applied"))?;
    Ok((r.map(|_| ()).map_err(MacieError::from_sdk), start.elapsed()))
}

fn assert_timeout(r: &Result<(), MacieError>) {
    match r {
        Err(e @ MacieError::Uncertain { .. }) => assert_eq!(e.code(), "Timeout", "{e}"),
        other => panic!("expected an Uncertain Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unanswered_attempt_ends_at_the_attempt_timeout_and_is_retried() -> Result<()> {
    let (url, accepted) = silent_server().await?;
    let attempt = Duration::from_millis(300);
    let c = clients(
        &url,
        AwsTimeouts {
            attempt,
            operation: Duration::from_secs(20),
        },
    )
    .await;
    let (r, took) = list_jobs(&c).await?;
    assert_timeout(&r);
    let tries = accepted.load(Ordering::SeqCst);
    // Each attempt was cut at the attempt timeout and retried (standard retry mode, 4 attempts
    // with backoff of at most 5 s between them), well before the operation timeout.
    assert!(tries >= 2, "the timed-out attempt was retried: {tries} connection(s)");
    assert!(took >= attempt * tries as u32, "{took:?} for {tries} attempts");
    assert!(
        took < Duration::from_secs(20),
        "ended by the attempt timeouts, took {took:?}"
    );
    Ok(())
}

#[tokio::test]
async fn the_operation_timeout_bounds_the_whole_call_with_its_retries() -> Result<()> {
    let (url, accepted) = silent_server().await?;
    let operation = Duration::from_millis(700);
    let c = clients(
        &url,
        AwsTimeouts {
            attempt: Duration::from_secs(10),
            operation,
        },
    )
    .await;
    let (r, took) = list_jobs(&c).await?;
    assert_timeout(&r);
    assert!(accepted.load(Ordering::SeqCst) >= 1, "the call reached the server");
    assert!(took >= operation, "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "ended at the operation timeout, took {took:?}"
    );
    Ok(())
}

#[test]
fn default_budgets() {
    let d = AwsTimeouts::default();
    assert_eq!(d.attempt, Duration::from_secs(10));
    assert_eq!(d.operation, Duration::from_secs(30));
    assert_eq!(AwsTimeouts::CONNECT, Duration::from_millis(3100));
}
