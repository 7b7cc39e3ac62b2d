//! STS: AssumeRole of the seeded roles, temporary credentials that expire on the emulator clock,
//! and the AWS account of the credentials that signed a request.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use serde::Serialize;

use super::{Emulator, Scope};
use crate::model::Timestamp;
use crate::seed::{is_external_id, role_arn_parts};

/// Lifetime of AssumeRole credentials when `DurationSeconds` is omitted.
pub const DEFAULT_SESSION: Duration = Duration::from_secs(3600);
/// `roleDurationSecondsType` bounds in the STS model.
const MIN_SESSION_SECONDS: u64 = 900;
const MAX_SESSION_SECONDS: u64 = 43200;

/// Temporary credentials issued by AssumeRole.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: Timestamp,
    pub role_arn: String,
    pub role_session_name: String,
    /// The role's AWS account: requests signed with these credentials act in it.
    pub account: String,
}

impl Session {
    /// `AssumedRoleUser.AssumedRoleId`: the role's unique id and the session name.
    pub fn assumed_role_id(&self) -> String {
        format!("{}:{}", role_id(&self.role_arn), self.role_session_name)
    }

    /// `AssumedRoleUser.Arn`: `arn:<partition>:sts::<account>:assumed-role/<role>/<session>`.
    pub fn assumed_role_arn(&self) -> String {
        let partition = self.role_arn.split(':').nth(1).unwrap_or("aws");
        let name = role_arn_parts(&self.role_arn).map(|(_, n)| n).unwrap_or_default();
        format!(
            "arn:{partition}:sts::{}:assumed-role/{name}/{}",
            self.account, self.role_session_name
        )
    }
}

/// A role's unique id (`AROA...`), stable for its ARN.
fn role_id(arn: &str) -> String {
    let mut h = DefaultHasher::new();
    ("macie-emulator-role", arn).hash(&mut h);
    format!("AROA{:016X}", h.finish())
}

/// An STS error (query protocol): `Code`, HTTP status and `Message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsError {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl StsError {
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> StsError {
        StsError {
            code,
            status,
            message: message.into(),
        }
    }

    /// The common query-protocol parameter error.
    pub fn validation(message: impl Into<String>) -> StsError {
        StsError::new("ValidationError", 400, message)
    }

    pub fn access_denied(message: impl Into<String>) -> StsError {
        StsError::new("AccessDenied", 403, message)
    }

    /// `ExpiredTokenException` in the STS model (HTTP 400).
    pub fn expired() -> StsError {
        StsError::new(
            "ExpiredTokenException",
            400,
            "The security token included in the request is expired",
        )
    }

    /// `Sender` for client errors, `Receiver` for server errors.
    pub fn fault_type(&self) -> &'static str {
        if self.status >= 500 { "Receiver" } else { "Sender" }
    }
}

/// The credentials that signed a request, as far as the emulator knows them.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Credentials AssumeRole issued, still valid.
    Role(Session),
    /// Credentials AssumeRole issued, expired on the emulator clock; the session's account.
    Expired(String),
    /// Any other key, or no signature: the emulator's `--account-id`.
    Own(Option<String>),
}

impl Caller {
    /// The AWS account the request acts in.
    pub fn account<'a>(&'a self, own: &'a str) -> &'a str {
        match self {
            Caller::Role(s) => &s.account,
            Caller::Expired(a) => a,
            Caller::Own(_) => own,
        }
    }
}

/// One `Name=value` parameter of a query-protocol request.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn required<'a>(params: &'a [(String, String)], name: &str, member: &str) -> Result<&'a str, StsError> {
    param(params, name).ok_or_else(|| {
        StsError::validation(format!(
            "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn constraint(value: &str, member: &str, what: &str) -> StsError {
    StsError::validation(format!(
        "1 validation error detected: Value '{value}' at '{member}' failed to satisfy constraint: {what}"
    ))
}

impl Emulator {
    /// Who signed a request with this access key id (`None`: unsigned).
    pub fn caller(&self, access_key_id: Option<&str>) -> Caller {
        match access_key_id.and_then(|k| self.sessions.get(k)) {
            Some(s) if self.now() >= s.expiration => Caller::Expired(s.account.clone()),
            Some(s) => Caller::Role(s.clone()),
            None => Caller::Own(access_key_id.map(str::to_string)),
        }
    }

    /// The scope a request signed with `access_key_id` for `region` acts in.
    pub fn scope_of(&self, caller: &Caller, region: &str) -> Scope {
        Scope {
            account: caller.account(&self.account_id).to_string(),
            region: region.to_string(),
        }
    }

    /// The ARN of the calling identity, as GetCallerIdentity reports it.
    pub fn caller_arn(&self, caller: &Caller) -> String {
        match caller {
            Caller::Role(s) => s.assumed_role_arn(),
            Caller::Expired(a) => format!("arn:aws:iam::{a}:root"),
            Caller::Own(_) => format!("arn:aws:iam::{}:root", self.account_id),
        }
    }

    /// GetCallerIdentity: `(UserId, Account, Arn)`. The emulator's own credentials are those of
    /// the `--account-id` root user.
    pub fn caller_identity(&self, caller: &Caller) -> Result<(String, String, String), StsError> {
        match caller {
            Caller::Role(s) => Ok((s.assumed_role_id(), s.account.clone(), s.assumed_role_arn())),
            Caller::Expired(_) => Err(StsError::expired()),
            Caller::Own(_) => Ok((
                self.account_id.clone(),
                self.account_id.clone(),
                self.caller_arn(caller),
            )),
        }
    }

    /// AssumeRole with the request's parameters: the role must be in the seed and the external
    /// id must match the role's (when it has one).
    pub fn assume_role(&mut self, caller: &Caller, params: &[(String, String)]) -> Result<Session, StsError> {
        let role_arn = required(params, "RoleArn", "roleArn")?;
        let session_name = required(params, "RoleSessionName", "roleSessionName")?;
        if !(2..=64).contains(&session_name.len())
            || !session_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
        {
            return Err(constraint(
                session_name,
                "roleSessionName",
                "Member must have length between 2 and 64 and match the pattern [\\w+=,.@-]*",
            ));
        }
        if !(20..=2048).contains(&role_arn.len()) {
            return Err(constraint(
                role_arn,
                "roleArn",
                "Member must have length between 20 and 2048",
            ));
        }
        let seconds = match param(params, "DurationSeconds") {
            None => DEFAULT_SESSION.as_secs(),
            Some(d) => match d.parse::<u64>() {
                Ok(s) if (MIN_SESSION_SECONDS..=MAX_SESSION_SECONDS).contains(&s) => s,
                _ => {
                    return Err(constraint(
                        d,
                        "durationSeconds",
                        "Member must have value between 900 and 43200",
                    ));
                }
            },
        };
        let external_id = param(params, "ExternalId");
        if let Some(x) = external_id
            && !is_external_id(x)
        {
            return Err(constraint(
                x,
                "externalId",
                "Member must have length between 2 and 1224 and match the pattern [\\w+=,.@:\\/-]*",
            ));
        }
        if let Caller::Expired(_) = caller {
            return Err(StsError::expired());
        }
        let denied = || {
            StsError::access_denied(format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {role_arn}",
                self.caller_arn(caller)
            ))
        };
        let role = self.seed.roles.iter().find(|r| r.arn == role_arn).ok_or_else(denied)?;
        if role.external_id.is_some() && role.external_id.as_deref() != external_id {
            return Err(denied());
        }
        let n = self.sessions.len() as u64 + 1;
        let mut h = DefaultHasher::new();
        (n, role_arn, session_name).hash(&mut h);
        let tag = h.finish();
        let session = Session {
            access_key_id: format!("ASIA{:08X}{n:08X}", tag as u32),
            secret_access_key: format!("emulator/{tag:016x}/{n:015}"),
            session_token: format!("IQoJemulator//session/{tag:016x}/{n}"),
            expiration: Timestamp(self.now().0 + Duration::from_secs(seconds)),
            role_arn: role.arn.clone(),
            role_session_name: session_name.to_string(),
            account: role.account().to_string(),
        };
        self.sessions.insert(session.access_key_id.clone(), session.clone());
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::Seed;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn assumed_credentials_act_in_the_role_account_until_they_expire() {
        let seed = Seed::parse("roles: [{arn: 'arn:aws:iam::111122223333:role/ops', externalId: 'x-1'}]").unwrap();
        let mut e = Emulator::new(seed, "us-east-1", "123456789012");
        let own = e.caller(Some("AKIDEMULATOR"));
        let wrong = params(&[
            ("RoleArn", "arn:aws:iam::111122223333:role/ops"),
            ("RoleSessionName", "s1"),
        ]);
        assert_eq!(e.assume_role(&own, &wrong).unwrap_err().code, "AccessDenied");
        let ok = params(&[
            ("RoleArn", "arn:aws:iam::111122223333:role/ops"),
            ("RoleSessionName", "s1"),
            ("ExternalId", "x-1"),
            ("DurationSeconds", "900"),
        ]);
        let s = e.assume_role(&own, &ok).unwrap();
        assert_eq!(s.assumed_role_arn(), "arn:aws:sts::111122223333:assumed-role/ops/s1");
        let caller = e.caller(Some(&s.access_key_id));
        assert_eq!(e.scope_of(&caller, "eu-west-1").account, "111122223333");
        e.advance_clock(Duration::from_secs(900));
        let caller = e.caller(Some(&s.access_key_id));
        assert!(matches!(caller, Caller::Expired(_)));
        assert_eq!(e.caller_identity(&caller).unwrap_err().code, "ExpiredTokenException");
        let short = params(&[
            ("RoleArn", "arn:aws:iam::111122223333:role/ops"),
            ("RoleSessionName", "s1"),
            ("DurationSeconds", "899"),
        ]);
        assert_eq!(e.assume_role(&own, &short).unwrap_err().code, "ValidationError");
    }

    #[test]
    fn role_session_names_are_checked_as_the_sts_model_says_and_named_in_the_arn() {
        let seed = Seed::parse("roles: [{arn: 'arn:aws:iam::111122223333:role/ops'}]").unwrap();
        let mut e = Emulator::new(seed, "us-east-1", "123456789012");
        let own = e.caller(Some("AKIDEMULATOR"));
        let at_limit = format!("macie-operator-{}", "a".repeat(49));
        let over = format!("{at_limit}a");
        // (RoleSessionName, accepted): roleSessionNameType, length 2 to 64, `[\w+=,.@-]*`.
        let rows: Vec<(&str, bool)> = vec![
            ("macie-operator-security-prod", true),
            (&at_limit, true),
            ("ab", true),
            ("w_+=,.@-Z9", true),
            (&over, false),
            ("a", false),
            ("a/b", false),
            ("a b", false),
            ("a:b", false),
            ("caf\u{e9}", false),
        ];
        for (name, accepted) in rows {
            let p = params(&[
                ("RoleArn", "arn:aws:iam::111122223333:role/ops"),
                ("RoleSessionName", name),
            ]);
            match e.assume_role(&own, &p) {
                Ok(s) => {
                    assert!(accepted, "{name} accepted");
                    let arn = format!("arn:aws:sts::111122223333:assumed-role/ops/{name}");
                    assert_eq!(s.assumed_role_arn(), arn);
                    let caller = e.caller(Some(&s.access_key_id));
                    assert_eq!(e.caller_identity(&caller).unwrap().2, arn);
                }
                Err(err) => {
                    assert!(!accepted, "{name} refused: {err:?}");
                    assert_eq!(err.code, "ValidationError");
                    assert!(err.message.contains("roleSessionName"), "{}", err.message);
                }
            }
        }
    }
}
