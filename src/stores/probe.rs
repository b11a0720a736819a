//! A store that cannot serve is a configuration error, found before any ref
//! is marked and said once (SPEC §4): settings that cannot work are refused
//! when the store is opened, and one listing per command shows whether the
//! server serves the bucket at all.
//!
//! The listing matters for a source bucket above all: Supabase Storage
//! answers every GetObject of a bucket that does not exist with NoSuchKey,
//! which would make every key look dangling; its listing says NoSuchBucket.

use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{ClientConfigKey, HttpError, HttpErrorKind};
use object_store::path::Path as StorePath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use super::{Role, Store, StoreKind};
use crate::error::{Error, Result};

/// Refuses S3 settings that cannot work, before any request: an `http://`
/// endpoint without `allow_http=true` (every request would fail with
/// "builder error"), and missing credentials (object_store would ask the
/// cloud metadata service at 169.254.169.254 and wait on it) unless the URL
/// says `skip_signature=true`.
pub(super) fn settings(builder: &AmazonS3Builder, role: Role, shown: &str) -> Result<()> {
    let value = |key: AmazonS3ConfigKey| builder.get_config_value(&key).filter(|v| !v.is_empty());
    let is_true =
        |key: AmazonS3ConfigKey| value(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let option = role.option();
    // object_store signs a request to whatever the endpoint gives, and
    // panics on an address that is not a URL (`minio.local:9000`).
    if let Some(endpoint) = value(AmazonS3ConfigKey::Endpoint) {
        // As written, not only as `url` would mend it (`http:///h` is `http://h/` there).
        let lower = endpoint.to_ascii_lowercase();
        let authority = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        let is_web_url = authority.is_some_and(|a| !a.is_empty() && !a.starts_with('/'))
            && url::Url::parse(&endpoint)
                .is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()));
        if !is_web_url {
            return Err(Error::Usage(format!(
                "{option} {shown}: endpoint= is not an http:// or https:// URL with a host: \
                 write its scheme, as endpoint=https://HOST or endpoint=http://HOST:PORT \
                 with allow_http=true"
            )));
        }
    }
    if let Some(endpoint) = value(AmazonS3ConfigKey::Endpoint)
        && endpoint.to_ascii_lowercase().starts_with("http://")
        && !is_true(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
    {
        return Err(Error::Config(format!(
            "{option} {shown}: the endpoint is plain http://: add allow_http=true to the URL \
             (or use an https:// endpoint)"
        )));
    }
    if is_true(AmazonS3ConfigKey::SkipSignature) {
        return Ok(());
    }
    let prefix = role.env_prefix();
    let missing = |name: &str| format!("{prefix}{name} (or AWS_{name})");
    let key = value(AmazonS3ConfigKey::AccessKeyId).is_some();
    let secret = value(AmazonS3ConfigKey::SecretAccessKey).is_some();
    let what = match (key, secret) {
        (true, true) => return Ok(()),
        (false, false) => format!(
            "no credentials: set {} and {}, or add skip_signature=true to the URL for a public bucket",
            missing("ACCESS_KEY_ID"),
            missing("SECRET_ACCESS_KEY")
        ),
        (true, false) => format!(
            "the access key is set but not its secret: set {}",
            missing("SECRET_ACCESS_KEY")
        ),
        (false, true) => format!(
            "the secret is set but not its access key: set {}",
            missing("ACCESS_KEY_ID")
        ),
    };
    Err(Error::Config(format!("{option} {shown}: {what}")))
}

/// One listing under the store's prefix: `Ok` when the server serves the
/// bucket, else the configuration error that names the likely cause and
/// what to change. Local and in-memory stores are checked when opened.
pub async fn check(store: &Store, role: Role) -> Result<()> {
    if store.kind != StoreKind::S3 {
        return Ok(());
    }
    let prefix = (!store.prefix.is_empty()).then(|| StorePath::from(store.prefix.as_str()));
    // First with few retries: a server that cannot be reached at all is
    // most likely a mistyped endpoint, and a refusal (4xx) is the answer
    // for good; both are said at once. Any other failure may pass (a 503
    // while the server starts): the listing is asked again with the
    // store's own retries.
    if let Some(quick) = &store.quick {
        match quick.list_with_delimiter(prefix.as_ref()).await {
            Ok(_) => return Ok(()),
            Err(e) if connect_failure(&e).is_some() || refused(&e) => {
                return Err(unusable(store, role, &e));
            }
            Err(e) => tracing::debug!("{}: listing again: {e}", store.shown),
        }
    }
    match store.inner.list_with_delimiter(prefix.as_ref()).await {
        Ok(_) => Ok(()),
        Err(e) => Err(unusable(store, role, &e)),
    }
}

/// The retries of the listing that checks a store: three, within about a
/// second (object_store's default is ten, with up to 15 s between two).
pub(super) const QUICK_RETRY: RetryConfig = RetryConfig {
    backoff: BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
    },
    max_retries: 3,
    retry_timeout: Duration::from_secs(10),
};

/// The configuration error for a listing of `store` that failed with `e`.
pub fn unusable(store: &Store, role: Role, e: &object_store::Error) -> Error {
    Error::Config(format!(
        "{} {}: {}",
        role.option(),
        store.shown,
        cause(e, store, role)
    ))
}

/// S3 error codes that say the credentials themselves are refused.
pub(crate) const CREDENTIAL_ERRORS: &[&str] = &[
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
];

/// What a failed listing most likely means, and what to change.
fn cause(e: &object_store::Error, store: &Store, role: Role) -> String {
    let text = e.to_string();
    let said = server_said(&text);
    let has = |code: &str| said.as_deref().is_some_and(|s| s.starts_with(code));
    let prefix = role.env_prefix();
    let variable = |name: &str| format!("{prefix}{name} (or AWS_{name})");
    let credentials = format!(
        "check {} and {}",
        variable("ACCESS_KEY_ID"),
        variable("SECRET_ACCESS_KEY")
    );
    let region = store.region.as_deref().unwrap_or("us-east-1");
    let region_hint = format!(
        "region= in the URL ({region} now) must be one the server serves: Supabase takes \
         its project's region, us-east-1 or auto"
    );
    let why = said.as_deref().unwrap_or(&text);
    if has("NoSuchBucket") {
        format!(
            "the bucket does not exist on this server: check the bucket name in {} and endpoint=",
            role.option()
        )
    } else if has("SignatureDoesNotMatch") {
        format!(
            "the server refused the request's signature: {region_hint}; else check {} ({why})",
            variable("SECRET_ACCESS_KEY")
        )
    } else if has("InvalidAccessKeyId") {
        format!(
            "the server does not know the access key: check {} ({why})",
            variable("ACCESS_KEY_ID")
        )
    } else if has("FeatureNotEnabled") {
        format!(
            "the S3 protocol is not enabled for this Supabase project: turn on \
             \"S3 protocol connection\" in the dashboard (Storage, Settings) ({why})"
        )
    } else if has("AccessDenied") {
        format!(
            "access denied: the server does not know these credentials or they may not list \
             the bucket: {credentials} (Supabase: the S3 access keys of the project's Storage \
             settings) ({why})"
        )
    } else if said.is_some() && matches!(status(&text), Some(401 | 403))
        || CREDENTIAL_ERRORS.iter().any(|c| has(c))
    {
        format!("the server refused the credentials: {credentials} ({why})")
    } else if matches!(status(&text), Some(401 | 403)) {
        format!(
            "the server refused the request (403) without a reason, as it does for a signing \
             region it does not serve: {region_hint}; else {credentials}"
        )
    } else if let Some(reason) = connect_failure(e) {
        // No answer at all (DNS, refused, TLS to a plain-http port):
        // credentials play no part yet.
        let endpoint = match &store.endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => format!("https://s3.{region}.amazonaws.com"),
        };
        let tls_to_http = endpoint.starts_with("https://") && reason.contains("InvalidContentType");
        let hint = if tls_to_http {
            "the port answers without TLS: use an http:// endpoint with allow_http=true"
        } else {
            "check endpoint= in the URL and the network"
        };
        format!("cannot connect to {endpoint}: {reason}: {hint}")
    } else {
        format!(
            "the server cannot list the bucket: check the URL and the credentials ({})",
            without_body(&text)
        )
    }
}

/// Whether the server answered `e` with a refusal that asking again does
/// not change: a 4xx status but 408 (timeout) and 429 (slow down).
fn refused(e: &object_store::Error) -> bool {
    matches!(status(&e.to_string()), Some(code @ 400..=499) if code != 408 && code != 429)
}

/// `text` up to the status and its reason: the body a server that is no S3
/// server sends after them (a whole HTML page) says nothing more.
fn without_body(text: &str) -> &str {
    let Some(at) = text.find("status code: ") else {
        return text;
    };
    let status = at + "status code: ".len();
    match text[status..].find(": ") {
        Some(end) => &text[..status + end],
        None => text,
    }
}

/// The HTTP status object_store reports in `text`. (Its listing errors
/// are not sorted by status, and the error that has it is not public.)
fn status(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// `Code: Message` of an S3 error document in `text`, when there is one.
fn server_said(text: &str) -> Option<String> {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let len = text[start..].find(&format!("</{name}>"))?;
        Some(text[start..start + len].to_string())
    };
    let code = element("Code")?;
    Some(match element("Message") {
        Some(message) => format!("{code}: {message}"),
        None => code,
    })
}

/// Why no connection was made, when the error is a failure to connect at
/// all: the causes under the HTTP client's error, innermost last.
fn connect_failure(e: &object_store::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        // object_store's own error passes the client's on as its source.
        let connect = err
            .downcast_ref::<HttpError>()
            .map(|h| h.kind() == HttpErrorKind::Connect)
            .or_else(|| err.downcast_ref::<reqwest::Error>().map(|r| r.is_connect()));
        match connect {
            Some(true) => {
                let mut causes: Vec<String> = Vec::new();
                let mut cause = err.source();
                while let Some(c) = cause {
                    let said = c.to_string();
                    // hyper's "client error (Connect)" only restates the kind.
                    if !said.ends_with("(Connect)") && !causes.iter().any(|s| s.contains(&said)) {
                        causes.push(said);
                    }
                    cause = c.source();
                }
                return Some(if causes.is_empty() {
                    err.to_string()
                } else {
                    causes.join(": ")
                });
            }
            Some(false) => return None,
            None => source = err.source(),
        }
    }
    None
}
