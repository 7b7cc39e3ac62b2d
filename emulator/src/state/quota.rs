//! Request rate quotas: CreateClassificationJob's, a token bucket per AWS account and region.
//!
//! Macie's quota is in real time, so the bucket fills on the wall clock (`Instant`), not on the
//! emulator clock: advancing the emulator clock gives no tokens, and a test can run at a
//! test-sized rate (a few per second) with real sleeps.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Emulator, Scope};

/// The `PUT /__admin/quotas` settings (and the seed's `createQuotaPerSecond`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quotas {
    /// CreateClassificationJob calls admitted per second per AWS account and region; `None`
    /// (absent or null) is unlimited, `0` admits none.
    #[serde(default)]
    pub create_classification_job_per_second: Option<f64>,
}

impl Quotas {
    pub fn check(&self) -> Result<(), String> {
        match self.create_classification_job_per_second {
            Some(r) if !(r.is_finite() && r >= 0.0) => Err(format!(
                "createClassificationJobPerSecond: {r} must be a non-negative number (or null for no quota)"
            )),
            _ => Ok(()),
        }
    }
}

impl Emulator {
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Replaces the quotas; the buckets keep when they last gave a token, and refill at the new
    /// rate from then on.
    pub fn set_quotas(&mut self, quotas: Quotas) -> Result<(), String> {
        quotas.check()?;
        self.quotas = quotas;
        Ok(())
    }

    /// Takes the token of one CreateClassificationJob call in `at`, or says it is throttled.
    ///
    /// The bucket holds one token (no burst: calls are spaced by at least `1 / rate` seconds)
    /// and is full at first. A throttled call takes nothing, so it does not push the next
    /// admitted call further away.
    pub(super) fn take_create_token(&mut self, at: &Scope) -> bool {
        let Some(rate) = self.quotas.create_classification_job_per_second else {
            return true;
        };
        let now = Instant::now();
        // With one token, the bucket is full again once 1/rate seconds passed since the last
        // token was taken (written as a product so that tiny rates cannot overflow).
        let full = self
            .create_tokens_taken
            .get(at)
            .is_none_or(|last| now.duration_since(*last).as_secs_f64() * rate >= 1.0);
        if full && rate > 0.0 {
            self.create_tokens_taken.insert(at.clone(), now);
            true
        } else {
            false
        }
    }
}
