//! Connection strings as the driver (tokio-postgres, like libpq) reads them:
//! `postgres://` URLs and `key=value` lists.
//!
//! Both what is shown (password hidden) and what is sent (starchive's own
//! `sslmode`/`sslrootcert` taken out) are cut from the text by the driver's
//! own grammar, never re-encoded: every other byte reaches the driver as the
//! user wrote it, and a password stays hidden however it is written (raw
//! `# / @ :`, percent-encoded, quoted with spaces), also in text the driver
//! would refuse.

use std::ops::Range;

use percent_encoding::percent_decode_str;

const HIDDEN: &str = "***";

/// Whether the driver reads `text` as a URL (else as `key=value` pairs).
fn url_body(text: &str) -> Option<&str> {
    ["postgres://", "postgresql://"]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))
}

/// The connection string as it may be shown: every password and other
/// secret-named parameter replaced by `***`. In a URL everything between
/// `://` and the last `@` but the user name is hidden; in a `key=value` list
/// whatever cannot be read as one is hidden from there on.
///
/// Text that is neither (a mistyped scheme such as `postgres:/u:pw@h` or
/// `postgres//u:pw@h`) is shown as a URL body: whatever follows a `:` before
/// the last `@` is hidden.
pub fn shown(text: &str) -> String {
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", shown_url_body(rest)),
        None if starts_as_pairs(text) => shown_pairs(text),
        None => shown_url_body(text),
    }
}

/// Whether `text` begins as a `key=value` list: a plain word, then `=`.
pub fn starts_as_pairs(text: &str) -> bool {
    let text = text.trim_start();
    let key_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    key_end > 0 && text[key_end..].trim_start().starts_with('=')
}

fn shown_url_body(rest: &str) -> String {
    let mut out = String::with_capacity(rest.len());
    let tail = match rest.rfind('@') {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(HIDDEN);
                }
                None => out.push_str(&rest[..at]),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };
    match tail.split_once('?') {
        Some((host_path, query)) => {
            out.push_str(host_path);
            out.push('?');
            let pieces: Vec<String> = query
                .split('&')
                .map(|piece| match piece.split_once('=') {
                    Some((key, _)) if crate::redact::is_secret_name(&decoded(key)) => {
                        format!("{key}={HIDDEN}")
                    }
                    _ => piece.to_string(),
                })
                .collect();
            out.push_str(&pieces.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

fn shown_pairs(text: &str) -> String {
    let (params, unreadable) = pairs(text);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for p in params
        .iter()
        .filter(|p| crate::redact::is_secret_name(&p.key))
    {
        out.push_str(&text[copied..p.value.start]);
        out.push_str(HIDDEN);
        copied = p.value.end;
    }
    match unreadable {
        Some(at) => {
            out.push_str(&text[copied..at]);
            out.push_str(HIDDEN);
        }
        None => out.push_str(&text[copied..]),
    }
    out
}

/// One `key=value` pair of a connection string: the key and value as the
/// driver decodes them, the whole pair's bytes and the value's bytes.
struct Pair {
    key: String,
    decoded: String,
    whole: Range<usize>,
    value: Range<usize>,
}

/// The pairs of a `key=value` list, read as the driver's parser reads them,
/// and where the text stops being readable (from there the driver refuses it).
fn pairs(text: &str) -> (Vec<Pair>, Option<usize>) {
    let mut out = Vec::new();
    let mut it = text.char_indices().peekable();
    let end_of = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        it.peek().map(|&(i, _)| i).unwrap_or(text.len())
    };
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|&(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let start = end_of(&mut it);
        if start == text.len() {
            return (out, None);
        }
        while it
            .next_if(|&(_, c)| !c.is_whitespace() && c != '=')
            .is_some()
        {}
        let key_end = end_of(&mut it);
        skip_ws(&mut it);
        if key_end == start || it.next_if(|&(_, c)| c == '=').is_none() {
            return (out, Some(start));
        }
        skip_ws(&mut it);
        let value_start = end_of(&mut it);
        let mut decoded = String::new();
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let mut closed = !quoted;
        while let Some(&(_, c)) = it.peek() {
            if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                break;
            }
            it.next();
            match c {
                '\\' => {
                    if let Some((_, escaped)) = it.next() {
                        decoded.push(escaped);
                    }
                }
                c => decoded.push(c),
            }
        }
        if quoted {
            closed = it.next_if(|&(_, c)| c == '\'').is_some();
        }
        let value_end = end_of(&mut it);
        if !closed || (!quoted && decoded.is_empty()) {
            return (out, Some(start));
        }
        out.push(Pair {
            key: text[start..key_end].to_string(),
            decoded,
            whole: start..value_end,
            value: value_start..value_end,
        });
    }
}

fn decoded(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Whether a URL's user name or password holds a raw `@`: the driver ends
/// them at the first `@` and looks up what follows as the host, where
/// [`shown`] (and a reader) takes the last `@` before the host.
pub fn raw_at_in_userinfo(text: &str) -> bool {
    let Some(body) = url_body(text) else {
        return false;
    };
    let Some(first) = body.find('@') else {
        return false;
    };
    let after = &body[first + 1..];
    after[..after.find('?').unwrap_or(after.len())].contains('@')
}

/// Takes out the parameters that `consume(key, value)` accepts (it returns
/// true for those it consumed) and returns the rest of the connection string,
/// byte for byte as given.
pub fn without_params(text: &str, mut consume: impl FnMut(&str, &str) -> bool) -> String {
    if let Some(body) = url_body(text) {
        // As the driver reads a URL: credentials up to the first `@`, then
        // host and path up to the first `?`, then `&`-separated pairs.
        let after_creds = body.find('@').map_or(0, |at| at + 1);
        let Some(q) = body[after_creds..].find('?').map(|i| after_creds + i) else {
            return text.to_string();
        };
        let kept: Vec<&str> = body[q + 1..]
            .split('&')
            .filter(|piece| match piece.split_once('=') {
                Some((key, value)) => !consume(&decoded(key), &decoded(value)),
                None => true,
            })
            .collect();
        let head = &text[..text.len() - body.len() + q];
        if kept.is_empty() {
            return head.to_string();
        }
        return format!("{head}?{}", kept.join("&"));
    }
    let (params, unreadable) = pairs(text);
    if unreadable.is_some() {
        // The driver refuses it whatever we take out, and says why.
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for p in params.iter().filter(|p| consume(&p.key, &p.decoded)) {
        out.push_str(&text[copied..p.whole.start]);
        copied = p.whole.end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_hidden_whatever_they_hold() {
        for (given, want) in [
            (
                "postgres://postgres.abcdef:pa#ss/wd@127.0.0.1:5432/postgres?sslmode=disable",
                "postgres://postgres.abcdef:***@127.0.0.1:5432/postgres?sslmode=disable",
            ),
            ("postgresql://u:p@ss:w@rd@h/db", "postgresql://u:***@h/db"),
            (
                "postgres://u:s3cret@host:notaport/db",
                "postgres://u:***@host:notaport/db",
            ),
            ("postgres://u:a%40b%23c@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?password=x%20y&sslmode=require",
                "postgres://h/db?password=***&sslmode=require",
            ),
        ] {
            assert_eq!(shown(given), want, "{given}");
        }
    }

    #[test]
    fn key_value_passwords_are_hidden_quoted_or_not() {
        for (given, want) in [
            (
                "host=127.0.0.1 user=kv password='Hj#aF xcv736 3cC^6' dbname=postgres",
                "host=127.0.0.1 user=kv password=*** dbname=postgres",
            ),
            (
                "host=h password = 'a b' dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("password=x\\ y host=h", "password=*** host=h"),
            ("host=h password='not closed", "host=h ***"),
            ("host=h password=", "host=h ***"),
            ("./a/dir", "./a/dir"),
        ] {
            assert_eq!(shown(given), want, "{given}");
        }
    }

    #[test]
    fn mistyped_urls_hide_what_follows_a_colon_before_the_at() {
        for (given, want) in [
            (
                "postgres:/postgres:UrlPw2@127.0.0.1:55432/postgres",
                "postgres:***@127.0.0.1:55432/postgres",
            ),
            (
                "postgres//postgres:LeakA1@127.0.0.1:55432/postgres",
                "postgres//postgres:***@127.0.0.1:55432/postgres",
            ),
            (
                "postgres:LeakA2@127.0.0.1:55432/postgres",
                "postgres:***@127.0.0.1:55432/postgres",
            ),
            (
                "postgres:/u:Leak:A3@h/db?sslmode=require&password=LeakA4",
                "postgres:***@h/db?sslmode=require&password=***",
            ),
            (
                "postgresql:/h/db?password=LeakA5",
                "postgresql:/h/db?password=***",
            ),
            ("./exports", "./exports"),
        ] {
            assert_eq!(shown(given), want, "{given}");
        }
    }

    #[test]
    fn a_raw_at_before_the_host_is_found() {
        for (given, raw) in [
            ("postgres://postgres:p@ss/w0rd#X@127.0.0.1:55436/bot", true),
            ("postgresql://u:p@ss@h/db", true),
            ("postgres://u:p?x@y@h/db", true),
            ("postgres://u:p%40ss@h/db", false),
            ("postgres://u:pa#ss/wd@h/db", false),
            ("postgres://u:p@h/db?application_name=a@b", false),
            ("host=h password=p@ss@x", false),
        ] {
            assert_eq!(raw_at_in_userinfo(given), raw, "{given}");
        }
    }

    #[test]
    fn only_consumed_params_are_taken_out() {
        let ssl = |k: &str, _: &str| k == "sslmode";
        assert_eq!(
            without_params(
                "postgres://u:p?x@h/db?sslmode=disable&options=-c%20statement_timeout%3D5min",
                ssl
            ),
            "postgres://u:p?x@h/db?options=-c%20statement_timeout%3D5min"
        );
        assert_eq!(
            without_params("postgres://h/db?sslmode=require", ssl),
            "postgres://h/db"
        );
        assert_eq!(
            without_params("host=h  sslmode = 'disable' options='-c a=b'", ssl),
            "host=h   options='-c a=b'"
        );
    }
}
