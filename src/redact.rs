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
/// libraries that print URLs we gave them). Only for long random secrets
/// (bot tokens, store keys): a short or word-like one (a password) would
/// mask ordinary words and so reveal itself; see [`password_hidden`].
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, HIDDEN)
    }
}

/// `text` with `password` hidden where the text quotes it: as a URL's
/// `:password@`, as the value of a `password=` pair (key=value or query
/// form, quoted or not), or between quotes; also percent-encoded or with
/// libpq's backslash escapes. Every other occurrence of its letters stays:
/// a password such as `o` or `refused` must not turn "Connection refused"
/// into a riddle whose answer is the password.
pub fn password_hidden(text: &str, password: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    if password.is_empty() {
        return text.to_string();
    }
    let encoded = utf8_percent_encode(password, NON_ALPHANUMERIC).to_string();
    // libpq's escapes: in quotes `\'` and `\\`, unquoted also `\ `.
    let escaped = |also: &[char]| -> String {
        password
            .chars()
            .flat_map(|c| match c {
                '\\' | '\'' => vec!['\\', c],
                c if also.contains(&c) => vec!['\\', c],
                c => vec![c],
            })
            .collect()
    };
    let mut forms = vec![
        password.to_string(),
        encoded.to_ascii_lowercase(),
        encoded,
        escaped(&[]),
        escaped(&[' ']),
    ];
    // Longest first, so that an escaped form wins over the raw one in it.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let quoted = forms.iter().find(|form| {
            text[i..].starts_with(form.as_str()) && is_quoted(&text[..i], &text[i + form.len()..])
        });
        match quoted {
            Some(form) => {
                out.push_str(HIDDEN);
                i += form.len();
            }
            None => {
                let c = text[i..].chars().next().unwrap_or_default();
                out.push(c);
                i += c.len_utf8().max(1);
            }
        }
    }
    out
}

/// Whether a value between `before` and `after` is quoted as a password:
/// `scheme://user:VALUE@`, `password=VALUE`, `password = 'VALUE'`,
/// `?password=VALUE&`, `"VALUE"`.
fn is_quoted(before: &str, after: &str) -> bool {
    if before.ends_with(':') && after.starts_with('@') {
        return true;
    }
    let quote = before
        .chars()
        .next_back()
        .filter(|c| matches!(c, '\'' | '"' | '`'));
    if let Some(q) = quote
        && after.starts_with(q)
    {
        return true;
    }
    let key = before
        .strip_suffix(['\'', '"'])
        .unwrap_or(before)
        .trim_end();
    let Some(key) = key.strip_suffix('=') else {
        return false;
    };
    let key = key.trim_end();
    let named = key.len() >= 8
        && key.is_char_boundary(key.len() - 8)
        && key[key.len() - 8..].eq_ignore_ascii_case("password");
    named
        && quote.is_none()
        && after
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || matches!(c, '&' | ',' | ';' | ')' | '#'))
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
    fn a_password_is_hidden_where_quoted_and_nowhere_else() {
        let driver = "error connecting to server: Connection refused (os error 111)";
        let random = "q8ZrT2vLm9XwP4kN";
        for pw in ["refused", "o", "Connection", "111", random] {
            assert_eq!(password_hidden(driver, pw), driver, "{pw}");
            for (given, want) in [
                (format!("postgres://u:{pw}@h/db"), "postgres://u:***@h/db"),
                (
                    format!("host=h password={pw} user=u"),
                    "host=h password=*** user=u",
                ),
                (
                    format!("host=h PASSWORD = '{pw}'"),
                    "host=h PASSWORD = '***'",
                ),
                (
                    format!("h/db?password={pw}&sslmode=x"),
                    "h/db?password=***&sslmode=x",
                ),
                (format!("value \"{pw}\" refused"), "value \"***\" refused"),
                (
                    format!("database '{pw}' does not exist"),
                    "database '***' does not exist",
                ),
            ] {
                assert_eq!(password_hidden(&given, pw), want, "{pw}: {given}");
            }
        }
        // Percent-encoded and escaped, as a URL or a key=value list holds them.
        for (given, pw, want) in [
            (
                "postgres://u:p%40ss%2Fw%23@h",
                "p@ss/w#",
                "postgres://u:***@h",
            ),
            ("postgres://u:p%3aw@h", "p:w", "postgres://u:***@h"),
            ("password='it\\'s a b'", "it's a b", "password='***'"),
            ("password=it\\'s\\ a\\ b x", "it's a b", "password=*** x"),
            ("password=o-no and o", "o", "password=o-no and o"),
            ("password 'o'", "o", "password '***'"),
        ] {
            assert_eq!(password_hidden(given, pw), want, "{given}");
        }
    }

    #[test]
    fn telegram_token_is_hidden() {
        let shown = url("https://api.telegram.org/file/bot123456:AAF-secret/stickers/file_1.webp");
        assert!(!shown.contains("AAF-secret"), "{shown}");
        assert!(shown.ends_with("/file/bot***/stickers/file_1.webp"));
    }
}
