//! The agent's token for the identity server: from a file (re-read for every request, since a
//! projected token rotates) or from an environment variable. Having none is a configuration
//! mistake (`invalid_configuration`), told as such and never as an outage of the identity
//! server.

use std::path::Path;

use wimse_core::{Error, ErrorKind};

use crate::config::IssuerConnection;

fn no_token(detail: String) -> Error {
    Error::with_detail(ErrorKind::InvalidConfiguration, detail)
}

/// Where the token comes from, for messages: `issuer.token_file (/path)` or
/// `issuer.token_env (NAME)`.
pub(crate) fn source_name(issuer: &IssuerConnection) -> String {
    match (&issuer.token_file, &issuer.token_env) {
        (Some(path), _) => format!("issuer.token_file ({})", path.display()),
        (None, Some(var)) => format!("issuer.token_env ({var})"),
        (None, None) => "issuer".to_owned(),
    }
}

/// The token now, reading the file without leaving the thread: only at start, before anything
/// is served (as `/proc/uptime` is read then).
pub(crate) fn read_blocking(issuer: &IssuerConnection) -> Result<String, Error> {
    match (&issuer.token_file, &issuer.token_env) {
        (Some(path), _) => from_file(path, std::fs::read_to_string(path)),
        (None, Some(var)) => from_env(var),
        (None, None) => Err(no_token("issuer: token_file or token_env is required".into())),
    }
}

/// The token now.
pub(crate) async fn read(issuer: &IssuerConnection) -> Result<String, Error> {
    match (&issuer.token_file, &issuer.token_env) {
        (Some(path), _) => from_file(path, tokio::fs::read_to_string(path).await),
        (None, Some(var)) => from_env(var),
        (None, None) => Err(no_token("issuer: token_file or token_env is required".into())),
    }
}

fn from_file(path: &Path, contents: std::io::Result<String>) -> Result<String, Error> {
    let contents = contents.map_err(|e| no_token(format!("issuer.token_file {}: {e}", path.display())))?;
    let token = contents.trim();
    if token.is_empty() {
        return Err(no_token(format!("issuer.token_file {} is empty", path.display())));
    }
    Ok(token.to_owned())
}

fn from_env(var: &str) -> Result<String, Error> {
    match std::env::var(var) {
        Ok(token) if !token.trim().is_empty() => Ok(token),
        Ok(_) => Err(no_token(format!("issuer.token_env names {var}, which is empty"))),
        Err(std::env::VarError::NotPresent) => Err(no_token(format!("issuer.token_env names {var}, which is not set"))),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(no_token(format!("issuer.token_env names {var}, which is not valid UTF-8")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_unreadable_file_is_no_token() {
        let path = Path::new("/run/agent-token");
        assert_eq!(from_file(path, Ok(" secret\n".into())).unwrap(), "secret");
        let empty = from_file(path, Ok(" \n".into())).unwrap_err();
        assert_eq!(empty.kind(), &ErrorKind::InvalidConfiguration);
        assert_eq!(empty.detail(), Some("issuer.token_file /run/agent-token is empty"));
        let missing = from_file(path, Err(std::io::ErrorKind::NotFound.into())).unwrap_err();
        assert_eq!(missing.kind(), &ErrorKind::InvalidConfiguration);
        assert!(missing.detail().unwrap().starts_with("issuer.token_file /run/agent-token: "), "{missing}");
    }
}
