//! One MacieDiscovery reconcile, as named steps. Each step either ends the reconcile (a
//! `Next`) or hands the next step its input, and makes only the effect its name says:
//!
//! 1. `leave_if_deleting`: deleting a MacieDiscovery leaves the accounts as they are.
//! 2. `wait_for_own_write`: a copy older than this process's own last write is never written
//!    from (the watch brings the newer copy).
//! 3. `admit`: the MacieAccount admits the resource; else the status says which rule refused.
//! 4. `taken_in`: the place's engine has taken this version of the resource in; else it is
//!    kicked, and its pass triggers the resource again.
//! 5. `status` (pure): what the engine's view gives the resource.
//! 6. `report`: one status write when something changed.
//!
//! Every status write is recorded as this process's own last write, so that step 2 knows it;
//! a process's first write to a resource is made against the copy's resourceVersion, and the
//! API server refuses it if that copy is older than its own (`Memory::precondition`).

use std::sync::Arc;

use kube::api::Api;
use kube::{Resource, ResourceExt};

use super::{Context, View, key, plan, refused_rows};
use crate::account::Admitted;
use crate::account::policy::Refusal;
use crate::api::conditions::{self, Summary};
use crate::api::{DiscoveryStatus, MacieDiscovery, MacieDiscoveryStatus, ManagementPolicy};
use crate::proceed;
use crate::runtime::status::{self, api_time};
use crate::runtime::{Error, Flow, Next, clock, go, stop};

/// One reconcile of `obj`.
pub(super) async fn reconcile_inner(obj: &MacieDiscovery, ctx: &Context) -> Result<Next, Error> {
    let r = Reconcile::new(obj, ctx);
    proceed!(r.leave_if_deleting());
    proceed!(r.wait_for_own_write());
    let admitted = proceed!(r.admit().await);
    let (view, generation) = proceed!(r.taken_in(&admitted));
    let status = r.status(&admitted, &view, generation);
    r.report(&status).await
}

/// What every step of one reconcile shares.
struct Reconcile<'a> {
    obj: &'a MacieDiscovery,
    ctx: &'a Context,
    /// The region the resource names (or the default).
    region: String,
}

impl<'a> Reconcile<'a> {
    fn new(obj: &'a MacieDiscovery, ctx: &'a Context) -> Reconcile<'a> {
        let region = ctx.engines.region_of(obj).to_string();
        tracing::debug!(name = %obj.name_any(), %region, "reconcile MacieDiscovery");
        Reconcile { obj, ctx, region }
    }

    /// Deleting a MacieDiscovery leaves the accounts as they are: nothing to do (no finalizer).
    fn leave_if_deleting(&self) -> Flow<()> {
        if self.obj.meta().deletion_timestamp.is_some() {
            return stop(Next::AwaitChange);
        }
        go(())
    }

    /// A copy older than this process's own last write is not written from.
    fn wait_for_own_write(&self) -> Flow<()> {
        self.ctx.memory.wait_for_own_write(self.obj)
    }

    /// The MacieAccount admits the resource (namespace, region, credentials), before any other
    /// step; a refusal is the resource's status.
    async fn admit(&self) -> Flow<Admitted> {
        match self.ctx.engines.admit(self.obj) {
            Ok(a) => {
                self.ctx.engines.clients.use_account(&a.place.account, a.role());
                go(a)
            }
            Err(refusal) => {
                self.refused(&refusal).await?;
                stop(Next::AwaitChange)
            }
        }
    }

    /// The place's view, when its engine has taken in this version of the resource, and the
    /// generation it took in. Else the engine is kicked: its next pass takes the resource in
    /// and triggers it again.
    fn taken_in(&self, admitted: &Admitted) -> Flow<(Arc<View>, i64)> {
        let (kick, view_rx) = self.ctx.engines.engine(&admitted.place);
        let view = view_rx.borrow().clone();
        let obj = self.obj;
        match plan::taken_generation(&view.resources, &key(obj), obj.uid().as_deref(), obj.meta().generation) {
            Some(generation) => go((view, generation)),
            None => {
                let _ = kick.send(());
                stop(Next::AwaitChange)
            }
        }
    }

    /// The status the view gives the resource (no effect): its rows, their counts and errors,
    /// the conditions (transition times kept from the status at hand; `ReconcilePaused` while
    /// paused: its accounts are observed, not sent), and the time of the observation it shows
    /// when anything changed.
    fn status(&self, admitted: &Admitted, view: &View, generation: i64) -> MacieDiscoveryStatus {
        let obj = self.obj;
        let accounts: Vec<(String, DiscoveryStatus)> = obj
            .spec
            .accounts
            .iter()
            .map(|a| (a.account_id.clone(), a.status))
            .collect();
        let r = plan::resource_status(
            &key(obj),
            &accounts,
            &refused_rows(obj, admitted),
            &view.desired,
            &view.accounts,
            view.api_error.as_ref(),
            &self.ctx.engines.config.plan,
        );
        let summary = match (self.ctx.engines.paused(obj, admitted), obj.spec.management_policy) {
            (Some(pause), _) => plan::paused_summary(pause, &admitted.place.account, &r.counts, &r.summary),
            (None, ManagementPolicy::Observe) => plan::observed_summary(&r.accounts, &r.summary),
            (None, ManagementPolicy::Manage) => r.summary,
        };
        let prev = obj.status.as_ref();
        let mut status = MacieDiscoveryStatus {
            observed_generation: Some(generation),
            conditions: self.conditions(&summary, Some(generation)),
            region: Some(self.region.clone()),
            accounts: r.accounts,
            error_codes: r.error_codes,
            counts: Some(r.counts),
            last_sync_time: prev.and_then(|p| p.last_sync_time.clone()),
        };
        if status::differs(prev, &status) {
            status.last_sync_time = view.observed_at.map(api_time);
        }
        status
    }

    /// The status written when something changed; the reconcile succeeded.
    async fn report(&self, status: &MacieDiscoveryStatus) -> Result<Next, Error> {
        self.write(status).await?;
        self.ctx.memory.succeeded(self.obj);
        Ok(Next::AwaitChange)
    }

    /// A resource its MacieAccount refuses as a whole: no Macie call, no engine; the status
    /// says which rule refused (Stalled, with an Event on entering it) and shows nothing
    /// observed.
    async fn refused(&self, refusal: &Refusal) -> Result<(), Error> {
        let summary = refusal.reason().summary(refusal.message());
        let generation = self.obj.meta().generation;
        let status = MacieDiscoveryStatus {
            observed_generation: generation,
            conditions: self.conditions(&summary, generation),
            region: Some(self.region.clone()),
            ..Default::default()
        };
        self.write(&status).await?;
        self.ctx.memory.succeeded(self.obj);
        Ok(())
    }

    /// The kstatus conditions of `summary`, with the transition times of the status at hand.
    fn conditions(
        &self,
        summary: &Summary,
        generation: Option<i64>,
    ) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let prev = self.obj.status.as_ref().map_or(&[][..], |p| &p.conditions);
        conditions::conditions(summary, generation, prev, api_time(clock::now()).0)
    }

    /// Writes `status` unless it equals the stored one; the write is recorded as this
    /// process's own last write to the resource.
    async fn write(&self, status: &MacieDiscoveryStatus) -> Result<(), Error> {
        let api: Api<MacieDiscovery> = crate::runtime::object_api(self.ctx.client.clone(), self.obj);
        let to = self.ctx.status_writer(&api, self.ctx.memory.precondition(self.obj));
        if let Some(written) = status::write(to, self.obj, self.obj.status.as_ref(), status).await? {
            self.ctx.memory.wrote(&written);
        }
        Ok(())
    }
}
