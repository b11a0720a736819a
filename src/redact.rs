//! Turning URLs and connection strings into text that carries no secret.
//!
//! Redaction happens where a URL becomes text: every message that names a
//! database, a store or a Telegram URL goes through here. Text that other
//! libraries wrote (their error messages may quote a URL we gave them) goes
//! through [`text`] before it reaches output, logs or the catalog.

use std::sync::{Mutex, OnceLock};

pub mod conninfo;

const HIDDEN: &str = "***";

/// Secrets this process read from its environment (store keys, bot tokens):
/// [`text`] hides each wherever it appears.
fn known() -> &'static Mutex<Vec<String>> {
    static KNOWN: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    KNOWN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers a secret, so that [`text`] hides it from every message.
pub fn remember(secret: &str) {
    // Shorter strings would hide ordinary words; no real key is that short.
    if secret.len() < 6 {
        return;
    }
    if let Ok(mut known) = known().lock()
        && !known.iter().any(|k| k == secret)
    {
        known.push(secret.to_string());
    }
}

/// Free text (an error message, a log line, a failure reason) without the
/// `user:password@` of any URL in it, without a Telegram bot token and
/// without any secret [`remember`]ed.
pub fn text(message: &str) -> String {
    let mut out = userinfo_hidden(message);
    if let Ok(known) = known().lock() {
        for secret in known.iter() {
            out = scrub(&out, secret);
        }
    }
    bot_tokens_hidden(&out)
}

/// Every `scheme://user:password@` in `message` as `scheme://user:***@`
/// (a userinfo without `:` may be a token: `scheme://***@`). The userinfo
/// runs to the last `@` before the URL ends (whitespace or a quote): a
/// password may hold `/`, `?` or `#` unescaped.
fn userinfo_hidden(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) if at > 0 => {
                match tail[..at].split_once(':') {
                    Some((user, _)) if !user.is_empty() && !user.contains('/') => {
                        out.push_str(user);
                        out.push(':');
                    }
                    _ => {}
                }
                out.push_str(HIDDEN);
                rest = &tail[at..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// `bot<digits>:<token>` (as Telegram URLs carry it) as `bot***`.
fn bot_tokens_hidden(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("bot") {
        out.push_str(&rest[..i + 3]);
        let tail = &rest[i + 3..];
        let digits = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        if digits > 0 && tail[digits..].starts_with(':') {
            let token_end = tail[digits + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                .map_or(tail.len(), |e| digits + 1 + e);
            out.push_str(HIDDEN);
            rest = &tail[token_end..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// A URL (or libpq `key=value` connection string) without its password,
/// query secrets or Telegram bot token.
pub fn url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.has_host() || parsed.scheme() == "file" => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some(HIDDEN));
            }
            let mut masked = false;
            let pairs: Vec<(String, String)> = parsed
                .query_pairs()
                .map(|(k, v)| {
                    let shown = if is_secret_name(&k) {
                        HIDDEN.into()
                    } else if v.contains("://") {
                        // An endpoint URL in the query: its userinfo too.
                        self::text(&v)
                    } else {
                        v.to_string()
                    };
                    masked |= shown != v;
                    (k.into_owned(), shown)
                })
                .collect();
            // Rewriting the query percent-encodes every value: only when a
            // secret had to go, so that a URL without one reads as typed.
            if masked {
                parsed.query_pairs_mut().clear().extend_pairs(pairs);
            }
            let path = bot_token_redacted(parsed.path());
            parsed.set_path(&path);
            parsed.to_string()
        }
        // libpq's `host=… password=…` form, or a URL the parser refuses
        // (a raw `#` or `/` in a password).
        _ => conninfo::shown(text),
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
    fn userinfo_redacted_at_its_source_keeps_its_user() {
        assert_eq!(
            text("cannot connect to postgres://bf:***@127.0.0.1:5432/db"),
            "cannot connect to postgres://bf:***@127.0.0.1:5432/db"
        );
        // A password that merely ends like a mask is still a password.
        assert_eq!(text("GET http://u:p:***@h/x"), "GET http://u:***@h/x");
    }

    #[test]
    fn free_text_loses_userinfo_tokens_and_known_secrets() {
        remember("Remembered-Secret-1");
        for (given, want) in [
            (
                "Error performing GET http://AKUSER:StorUrlSecret@127.0.0.1:1/bkt/x in 1ms",
                "Error performing GET http://AKUSER:***@127.0.0.1:1/bkt/x in 1ms",
            ),
            (
                "a \"https://u:p/w#x@h/p\" and s3://k@b/o",
                "a \"https://u:***@h/p\" and s3://***@b/o",
            ),
            (
                "http://host/path no userinfo",
                "http://host/path no userinfo",
            ),
            (
                "GET https://api.example/bot123:AA-b_c/getFile failed",
                "GET https://api.example/bot***/getFile failed",
            ),
            ("key Remembered-Secret-1 refused", "key *** refused"),
            ("robot 12 not a token", "robot 12 not a token"),
        ] {
            assert_eq!(text(given), want, "{given}");
        }
    }

    #[test]
    fn endpoint_password_in_a_store_url_is_hidden() {
        let shown = url("s3://bkt?endpoint=http://AK:EndpointPw@127.0.0.1:1&allow_http=true");
        assert!(!shown.contains("EndpointPw"), "{shown}");
        assert!(shown.contains("allow_http=true"), "{shown}");
    }

    #[test]
    fn telegram_token_is_hidden() {
        let shown = url("https://api.telegram.org/file/bot123456:AAF-secret/stickers/file_1.webp");
        assert!(!shown.contains("AAF-secret"), "{shown}");
        assert!(shown.ends_with("/file/bot***/stickers/file_1.webp"));
    }
}
