//! Paging and query criteria: opaque page tokens bound to their query, and the filter and sort
//! criteria of ListClassificationJobs.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::model::*;

pub(super) fn fingerprint<T: Serialize>(v: &T) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(v).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Opaque page token: the offset and a fingerprint of the query it belongs to.
pub(super) fn encode_token(offset: usize, fingerprint: u64) -> String {
    let raw = format!("v1:{offset}:{fingerprint:016x}");
    raw.bytes().map(|b| format!("{:02x}", b ^ 0x5a)).collect()
}

pub(super) fn decode_token(token: &str, fingerprint: u64) -> Result<usize, ApiError> {
    let bad = || ApiError::validation("The nextToken is not valid for this request.");
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16).map(|b| b ^ 0x5a))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let raw = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = raw.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(off), Some(fp), None) if fp == format!("{fingerprint:016x}") => {
            off.parse().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

#[derive(Deserialize, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct FilterCriteria {
    #[serde(default)]
    pub(super) includes: Vec<FilterTerm>,
    #[serde(default)]
    pub(super) excludes: Vec<FilterTerm>,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum Comparator {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    Ne,
    Contains,
    StartsWith,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) enum FilterKey {
    JobType,
    JobStatus,
    CreatedAt,
    Name,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct FilterTerm {
    comparator: Comparator,
    key: FilterKey,
    #[serde(default)]
    values: Vec<String>,
}

impl FilterTerm {
    pub(super) fn check(&self) -> Result<(), ApiError> {
        if self.values.is_empty() {
            return Err(ApiError::validation(
                "filterCriteria: every term needs at least one value",
            ));
        }
        // CONTAINS and STARTS_WITH match text; every other comparator compares times.
        let textual = matches!(self.comparator, Comparator::Contains | Comparator::StartsWith);
        if self.key == FilterKey::CreatedAt && !textual {
            for v in &self.values {
                Timestamp::parse(v).map_err(|e| ApiError::validation(format!("filterCriteria createdAt: {e}")))?;
            }
        }
        Ok(())
    }

    /// EQ, GT, GTE, LT, LTE, CONTAINS, STARTS_WITH match when any value does; NE when none is
    /// equal. createdAt compares as time; the other keys compare as strings.
    pub(super) fn matches(&self, job: &JobSummary) -> Result<bool, ApiError> {
        use std::cmp::Ordering;
        let field = match self.key {
            FilterKey::JobType => job.job_type.as_str().to_string(),
            FilterKey::JobStatus => job.job_status.as_str().to_string(),
            FilterKey::Name => job.name.clone(),
            FilterKey::CreatedAt => job.created_at.to_string(),
        };
        let cmp = |v: &str| -> Result<Ordering, ApiError> {
            Ok(if self.key == FilterKey::CreatedAt {
                let t = Timestamp::parse(v).map_err(ApiError::validation)?;
                job.created_at.millis().cmp(&t.millis())
            } else {
                field.as_str().cmp(v)
            })
        };
        let mut any = false;
        for v in &self.values {
            any |= match self.comparator {
                Comparator::Eq | Comparator::Ne => cmp(v)? == Ordering::Equal,
                Comparator::Gt => cmp(v)? == Ordering::Greater,
                Comparator::Gte => cmp(v)? != Ordering::Less,
                Comparator::Lt => cmp(v)? == Ordering::Less,
                Comparator::Lte => cmp(v)? != Ordering::Greater,
                Comparator::Contains => field.contains(v.as_str()),
                Comparator::StartsWith => field.starts_with(v.as_str()),
            };
        }
        Ok(if self.comparator == Comparator::Ne { !any } else { any })
    }
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(super) enum SortAttribute {
    CreatedAt,
    JobStatus,
    Name,
    JobType,
}

#[derive(Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum OrderBy {
    Asc,
    Desc,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub(super) struct SortCriteria {
    #[serde(default = "default_sort_attr")]
    pub(super) attribute_name: SortAttribute,
    #[serde(default = "default_order")]
    pub(super) order_by: OrderBy,
}

fn default_sort_attr() -> SortAttribute {
    SortAttribute::CreatedAt
}

fn default_order() -> OrderBy {
    OrderBy::Asc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_bound_to_their_query() {
        let t = encode_token(40, 7);
        assert_eq!(decode_token(&t, 7).unwrap(), 40);
        assert!(decode_token(&t, 8).is_err());
        assert!(decode_token("zz", 7).is_err());
        assert!(!t.contains("40"), "token should be opaque: {t}");
    }
}
