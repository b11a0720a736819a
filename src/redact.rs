//! Turning URLs and connection strings into text that carries no secret.
//!
//! Redaction happens where a URL becomes text, never afterwards: every message
//! that names a database, a store or a Telegram URL goes through here.

const HIDDEN: &str = "***";

/// A URL (or libpq `key=value` connection string) without its password,
/// query secrets or Telegram bot token.
pub fn url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.has_host() || parsed.scheme() == "file" => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(HIDDEN));
            }
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let secret = is_secret_name(&k);
                    (
                        k.into_owned(),
                        if secret {
                            HIDDEN.into()
                        } else {
                            v.into_owned()
                        },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            let path = bot_token_redacted(parsed.path());
            parsed.set_path(&path);
            parsed.to_string()
        }
        // libpq's `host=… password=…` form, or a URL the parser refuses
        // (a raw `#` or `/` in a password).
        _ => crate::source::conninfo::shown(text),
    }
}

/// Whether a parameter of this name holds a secret.
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "signature",
        "credential",
        "key_id",
        "access_key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Telegram puts the token in the path: `/bot<TOKEN>/getFile`, `/file/bot<TOKEN>/…`.
fn bot_token_redacted(path: &str) -> String {
    path.split('/')
        .map(|seg| match seg.strip_prefix("bot") {
            Some(rest) if rest.contains(':') => format!("bot{HIDDEN}"),
            _ => seg.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Removes every occurrence of `secret` from `text` (for error messages of
/// libraries that print URLs we gave them).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, HIDDEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_hidden() {
        let shown = url(
            "postgres://postgres.abc:s3cr%21t@aws-0-eu.pooler.supabase.com:6543/postgres?sslmode=require",
        );
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("pooler.supabase.com:6543"));
        assert!(shown.contains("sslmode=require"));
    }

    #[test]
    fn key_value_password_is_hidden() {
        let shown = url("host=db port=5432 password=hunter2 user=me");
        assert_eq!(shown, "host=db port=5432 password=*** user=me");
    }

    #[test]
    fn telegram_token_is_hidden() {
        let shown = url("https://api.telegram.org/file/bot123456:AAF-secret/stickers/file_1.webp");
        assert!(!shown.contains("AAF-secret"), "{shown}");
        assert!(shown.ends_with("/file/bot***/stickers/file_1.webp"));
    }
}
