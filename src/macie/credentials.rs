//! TEMPORARY placeholder (replaced by the credentials branch): the API the clients use.
use super::MacieError;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleSpec {
    pub role_arn: String,
    pub external_id: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SessionCredentials {
    role: RoleSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub arn: String,
}

impl SessionCredentials {
    pub fn new(_base: &aws_config::SdkConfig, role: RoleSpec, _sts: Option<String>) -> SessionCredentials {
        SessionCredentials { role }
    }
    pub fn invalidate(&self) {}
}

impl aws_sdk_macie2::config::ProvideCredentials for SessionCredentials {
    fn provide_credentials<'a>(&'a self) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let _ = &self.role;
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded("placeholder"),
        ))
    }
}

pub async fn caller_identity(
    _config: &aws_config::SdkConfig,
    _credentials: Option<SessionCredentials>,
    _sts: Option<String>,
    _region: &str,
) -> Result<Identity, MacieError> {
    Ok(Identity {
        account: "123456789012".into(),
        arn: "arn:aws:iam::123456789012:root".into(),
    })
}

impl MacieError {
    pub fn is_expired_credentials(&self) -> bool {
        false
    }
}
