//! Leader election on a coordination.k8s.io/v1 Lease, with the API's optimistic concurrency
//! (every write carries the resourceVersion it read), as client-go's leaderelection does.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease is valid without renewal; a follower takes over after this.
    pub lease_duration: Duration,
    /// Renew (or try to acquire) this often.
    pub retry_period: Duration,
}

/// Holds or waits for the lease.
pub struct LeaderElector {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease now.
    Leading,
    /// Another replica holds a live lease.
    Following(String),
}

impl LeaderElector {
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> LeaderElector {
        LeaderElector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    /// One try to acquire or renew the lease.
    pub async fn try_acquire(&self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let secs = i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        match self.api.get_opt(&self.cfg.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.identity.clone()),
                        lease_duration_seconds: Some(secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following(String::new())),
                    Err(e) => Err(e),
                }
            }
            Some(mut lease) => {
                let spec = lease.spec.clone().unwrap_or_default();
                let holder = spec.holder_identity.clone().unwrap_or_default();
                let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(secs).max(0) as u64);
                let renewed = spec.renew_time.as_ref().map(|t| t.0);
                let expired = renewed.is_none_or(|t| t.checked_add(duration).is_ok_and(|end| now > end));
                let mine = holder == self.cfg.identity;
                if !mine && !holder.is_empty() && !expired {
                    return Ok(Attempt::Following(holder));
                }
                let mut new_spec = spec.clone();
                if !mine {
                    new_spec.acquire_time = Some(MicroTime(now));
                    new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                new_spec.holder_identity = Some(self.cfg.identity.clone());
                new_spec.lease_duration_seconds = Some(secs);
                new_spec.renew_time = Some(MicroTime(now));
                lease.spec = Some(new_spec);
                // replace() sends the resourceVersion we read: a concurrent writer makes it fail.
                match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
                    Ok(_) => Ok(Attempt::Leading),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following(holder)),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut last = None;
        loop {
            match self.try_acquire().await {
                Ok(Attempt::Leading) => {
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    return;
                }
                Ok(Attempt::Following(holder)) => {
                    if last.as_ref() != Some(&holder) {
                        tracing::info!(lease = %self.cfg.name, %holder, "following the leader");
                        last = Some(holder);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "leader election: cannot read or write the Lease"),
            }
            tokio::time::sleep(self.cfg.retry_period).await;
        }
    }

    /// Renews the lease until it cannot be renewed for a whole lease duration (or another
    /// replica took it); returns then. The caller must stop acting as leader.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.cfg.retry_period).await;
            match self.try_acquire().await {
                Ok(Attempt::Leading) => last_ok = tokio::time::Instant::now(),
                Ok(Attempt::Following(holder)) => {
                    tracing::error!(%holder, "lost the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew the leader lease");
                    // Give up before the lease can expire, so two leaders never overlap.
                    if last_ok.elapsed() + self.cfg.retry_period >= self.cfg.lease_duration {
                        tracing::error!("lost the leader lease: renewals failed for a lease duration");
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up (on shutdown) so a follower takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.cfg.name).await
            && lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(self.cfg.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
            }
            match self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => tracing::info!("released the leader lease"),
                Err(e) => tracing::warn!(error = %e, "could not release the leader lease"),
            }
        }
    }
}
