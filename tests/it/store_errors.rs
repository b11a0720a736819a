//! A store that cannot serve is a configuration error (SPEC §4): exit 1
//! before any ref is marked, one message that names the cause and the
//! option or variable to change. Each case against the real Supabase
//! Storage server, and against s3s-fs and moto where the case applies.
//!
//! Not produced by a real server here: Supabase's `FeatureNotEnabled` (the
//! S3 protocol turned off) exists only on a multi-tenant server, so it is
//! injected by s3s-fs's fault layer, the answer's shape being Supabase's.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::backend::{Backend, Bucket, Kind};
use crate::support::dataset::FIXTURE_DB;
use crate::support::moto::moto;
use crate::support::run::{run, starchive};
use crate::support::s3::TestS3;
use crate::support::supabase::supabase;
use crate::support::temp_dir;

/// Generates one `#[test]` per backend named for each test.
macro_rules! on {
    ($test:ident: $($kind:ident),*) => {
        mod $test {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $kind() {
                    super::$test(&super::Backend::new(super::Kind::$kind));
                }
            )*
        }
    };
}

on!(missing_bucket_stops_every_command_before_any_ref_is_marked: S3s, Supabase, Moto);
on!(wrong_secret_names_the_variable: S3s, Supabase);
on!(unknown_access_key_names_the_variables: S3s, Supabase);

/// A snapshotted archive (every ref pending), in `dir`.
fn snapshotted(dir: &Path) -> std::path::PathBuf {
    let archive = dir.join("archive");
    run(starchive(&archive).args(["snapshot", "--db", FIXTURE_DB])).expect_code(0);
    archive
}

/// `status --json`: what the catalog says of every ref and destination.
fn status(archive: &Path) -> serde_json::Value {
    run(starchive(archive).args(["--json", "status"]))
        .expect_code(0)
        .json()
}

/// `url` with another bucket name.
fn with_bucket(url: &str, bucket: &str) -> String {
    let rest = url.strip_prefix("s3://").expect("an s3:// URL");
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    format!("s3://{bucket}{}", &rest[at..])
}

/// Runs every command that uses a store (`fetch --storage`, `check
/// --storage`, `push --to`, `verify --to`, `backfill --to`) on `url` with `env`; asserts each exits 1
/// before marking anything, with a message holding every part of `says`
/// (`{option}` standing for the command's option), and no secret.
#[track_caller]
fn every_command_refuses(url: &str, env: &[(String, String)], says: &[&str]) {
    let dir = temp_dir();
    let archive = snapshotted(dir.path());
    let before = status(&archive);
    let commands: [(&str, Vec<&str>); 5] = [
        ("--storage", vec!["fetch", "--storage", url]),
        ("--storage", vec!["check", "--storage", url]),
        ("--to", vec!["push", "--to", url]),
        ("--to", vec!["verify", "--to", url]),
        // The database is never reached: the store is checked first.
        (
            "--to",
            vec![
                "backfill",
                "--apply",
                "--db",
                "postgres://127.0.0.1:1/none",
                "--to",
                url,
            ],
        ),
    ];
    for (option, args) in commands {
        let started = Instant::now();
        let out = run(starchive(&archive)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v))));
        let role = if option == "--storage" {
            "STORAGE"
        } else {
            "TO"
        };
        let message = out.stderr.trim();
        assert_eq!(
            out.code,
            Some(1),
            "{args:?}: exit 1\n{message}\n{}",
            out.stdout
        );
        assert_eq!(
            message.lines().count(),
            1,
            "{args:?}: one message:\n{message}"
        );
        for part in says {
            let part = part.replace("{option}", option).replace("{ROLE}", role);
            assert!(message.contains(&part), "{args:?}: {part:?} in:\n{message}");
        }
        for (name, secret) in env {
            if name.contains("SECRET") {
                assert!(
                    !message.contains(secret.as_str()),
                    "{args:?}: the secret shown"
                );
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{args:?}: refused at once, not after {:?}",
            started.elapsed()
        );
        assert_eq!(status(&archive), before, "{args:?}: nothing marked");
    }
}

fn both_roles(bucket: &Bucket) -> Vec<(String, String)> {
    let mut env = bucket.env("STORAGE");
    env.extend(bucket.env("TO"));
    env
}

fn missing_bucket_stops_every_command_before_any_ref_is_marked(backend: &Backend) {
    let bucket = backend.bucket();
    let url = with_bucket(bucket.url(), "no-such-bucket");
    every_command_refuses(
        &url,
        &both_roles(&bucket),
        &["no-such-bucket", "the bucket does not exist", "{option}"],
    );
}

fn wrong_secret_names_the_variable(backend: &Backend) {
    let bucket = backend.bucket();
    let env: Vec<(String, String)> = both_roles(&bucket)
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("SECRET_ACCESS_KEY") {
                (k, "not-the-secret".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    every_command_refuses(
        bucket.url(),
        &env,
        &["signature", "STARCHIVE_{ROLE}_SECRET_ACCESS_KEY", "region="],
    );
}

fn unknown_access_key_names_the_variables(backend: &Backend) {
    let bucket = backend.bucket();
    let env: Vec<(String, String)> = both_roles(&bucket)
        .into_iter()
        .map(|(k, v)| {
            if k.ends_with("ACCESS_KEY_ID") {
                (k, "AKIDNOTKNOWNHERE".to_owned())
            } else {
                (k, v)
            }
        })
        .collect();
    every_command_refuses(bucket.url(), &env, &["STARCHIVE_{ROLE}_ACCESS_KEY_ID"]);
}

/// Supabase answers a signing region it does not serve with 403 and nothing
/// else on objects, SignatureDoesNotMatch on listings.
#[test]
fn region_the_server_does_not_serve_names_the_region() {
    let server = supabase();
    let bucket = server.bucket();
    let url = bucket
        .store_url("")
        .replace(&format!("region={}", server.region), "region=eu-central-1");
    assert!(url.contains("region=eu-central-1"), "{url}");
    let mut env = server.env("STORAGE");
    env.extend(server.env("TO"));
    every_command_refuses(&url, &env, &["region=", "eu-central-1", "{option}"]);
}

/// `http://` without `allow_http=true` would fail every object with
/// "HTTP error: builder error".
#[test]
fn plain_http_endpoint_without_allow_http_says_what_to_add() {
    let server = supabase();
    let bucket = server.bucket();
    let url = bucket.store_url("").replace("&allow_http=true", "");
    assert!(!url.contains("allow_http"), "{url}");
    let mut env = server.env("STORAGE");
    env.extend(server.env("TO"));
    every_command_refuses(&url, &env, &["allow_http=true", "{option}"]);
}

/// An endpoint written without its scheme (`minio.local:9000`), or that is
/// no web URL, is bad usage, said with what to write, in every command
/// that takes a store: object_store would panic signing a request to it.
#[test]
fn an_endpoint_without_a_scheme_is_bad_usage() {
    let dir = temp_dir();
    let archive = snapshotted(dir.path());
    let env: Vec<(String, String)> = ["STORAGE", "TO"]
        .iter()
        .flat_map(|role| {
            [
                (
                    format!("STARCHIVE_{role}_ACCESS_KEY_ID"),
                    "AKNOSCHEME".into(),
                ),
                (
                    format!("STARCHIVE_{role}_SECRET_ACCESS_KEY"),
                    "NoSchemeSecret".into(),
                ),
            ]
        })
        .collect();
    for endpoint in [
        "minio.local:9000",
        "127.0.0.1:9000",
        "ftp://h:21",
        "http:///x",
    ] {
        let url = format!("s3://bkt/p?endpoint={endpoint}&allow_http=true");
        for (option, command) in [
            ("--storage", "fetch"),
            ("--storage", "check"),
            ("--to", "push"),
            ("--to", "verify"),
        ] {
            let out = run(starchive(&archive)
                .args(["--json", command, option, &url])
                .envs(env.iter().map(|(k, v)| (k, v))));
            assert_eq!(out.code, Some(2), "{command} {url}: {}", out.stderr);
            let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("a JSON error");
            let error = doc["error"].as_str().unwrap_or_default();
            assert!(
                error.contains(option) && error.contains("write its scheme"),
                "{command} {url}: {error}"
            );
            assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
            assert!(!out.stdout.contains("NoSchemeSecret"), "{}", out.stdout);
        }
    }
}

/// A server that is no S3 server (a web server's 404 page) is named by its
/// status, without the page it sent.
#[test]
fn a_web_server_at_the_endpoint_is_named_without_its_page() {
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = web.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let page =
            "<!DOCTYPE HTML><html><body><h1>Error response</h1><p>File not found</p></body></html>";
        for conn in web.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let answer = format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut conn, answer.as_bytes());
        }
    });
    let env: Vec<(String, String)> = vec![
        ("STARCHIVE_TO_ACCESS_KEY_ID".into(), "AKWEB".into()),
        ("STARCHIVE_TO_SECRET_ACCESS_KEY".into(), "WebSecret".into()),
    ];
    let url = format!("s3://bkt/p?endpoint=http://127.0.0.1:{port}&allow_http=true");
    let dir = temp_dir();
    let archive = snapshotted(dir.path());
    let out = run(starchive(&archive)
        .args(["push", "--to", &url])
        .envs(env.iter().map(|(k, v)| (k, v))));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let message = out.stderr.trim();
    assert!(
        message.contains("cannot list the bucket") && message.contains("404 Not Found"),
        "{message}"
    );
    assert!(
        !message.contains("DOCTYPE") && !message.contains("File not found"),
        "{message}"
    );
}

/// No credentials: refused at once, the variables named, and the cloud
/// metadata service never asked (here a server of ours stands in for
/// 169.254.169.254, and it must see no request).
#[test]
fn no_credentials_are_refused_without_asking_a_metadata_service() {
    let server = supabase();
    let bucket = server.bucket();
    let metadata = TestS3::start();
    let url = format!(
        "{}&metadata_endpoint={}",
        bucket.store_url(""),
        metadata.endpoint()
    );
    every_command_refuses(
        &url,
        &[],
        &[
            "no credentials",
            "STARCHIVE_{ROLE}_ACCESS_KEY_ID",
            "STARCHIVE_{ROLE}_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "skip_signature=true",
        ],
    );
    assert_eq!(
        metadata.requests("TOTAL"),
        0,
        "{:?}",
        metadata.request_log()
    );
}

/// One half of the key pair: the other half is named.
#[test]
fn one_half_of_the_key_pair_names_the_other() {
    let server = supabase();
    let bucket = server.bucket();
    let url = bucket.store_url("");
    for (set, missing) in [
        ("ACCESS_KEY_ID", "SECRET_ACCESS_KEY"),
        ("SECRET_ACCESS_KEY", "ACCESS_KEY_ID"),
    ] {
        let env: Vec<(String, String)> = server
            .env("STORAGE")
            .into_iter()
            .chain(server.env("TO"))
            .filter(|(k, _)| k.ends_with(set))
            .collect();
        assert_eq!(env.len(), 2, "{env:?}");
        every_command_refuses(&url, &env, &[&format!("set STARCHIVE_{{ROLE}}_{missing}")]);
    }
    // The AWS_ fallback counts as set.
    let out = run(starchive(&snapshotted(temp_dir().path()))
        .args(["--json", "fetch", "--storage", &url])
        .env("STARCHIVE_STORAGE_ACCESS_KEY_ID", &server.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &server.secret_key));
    assert_ne!(out.code, Some(1), "{}", out.stderr);
}

/// `skip_signature=true` (a public bucket) is not refused for want of
/// credentials: moto serves unsigned requests.
#[test]
fn skip_signature_needs_no_credentials() {
    let server = moto();
    let bucket = server.bucket();
    let fixtures = Path::new(crate::support::dataset::FIXTURE_BUCKET);
    assert_eq!(server.put_public_dir(&bucket, fixtures), 13);
    let dir = temp_dir();
    let archive = snapshotted(dir.path());
    let url = format!("{}&skip_signature=true", server.store_url(&bucket, ""));
    let doc = run(starchive(&archive).args(["--json", "fetch", "--storage", &url]))
        .expect_code(0)
        .json();
    assert_eq!(doc["done"], 15, "{doc}");
}

/// Supabase's answers when the S3 protocol is off, and when the keys may
/// not list: the cause is named, with what to change.
#[test]
fn protocol_disabled_and_access_denied_are_named() {
    for (code, says) in [
        ("FeatureNotEnabled", "S3 protocol is not enabled"),
        ("AccessDenied", "access denied"),
    ] {
        let s3 = TestS3::start();
        s3.create_bucket("stickers");
        s3.fail_next_with_code("LIST", 5, 403, code);
        let mut env = s3.env("STORAGE");
        env.extend(s3.env("TO"));
        every_command_refuses(&s3.store_url("stickers", ""), &env, &[says, "{option}"]);
        assert_eq!(s3.requests("GET"), 0, "no object read");
    }
}

/// A server that answers the check's listing with 503 for longer than the
/// check's few quick retries (a Supabase project waking up) is asked again
/// with the store's own retries, and the command goes on: only a store
/// that cannot be reached, or a refusal, is said at once.
#[test]
fn a_listing_answered_503_for_a_while_is_asked_again() {
    let s3 = TestS3::start();
    s3.create_bucket("stickers");
    s3.fail_next("LIST", 6, 503);
    let mut env = s3.env("TO");
    env.extend(s3.env("STORAGE"));
    let dir = temp_dir();
    let archive = snapshotted(dir.path());
    let out = run(starchive(&archive)
        .args(["push", "--to", &s3.store_url("stickers", "")])
        .envs(env.iter().map(|(k, v)| (k, v))));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(s3.requests("LIST") >= 7, "{}", s3.requests("LIST"));
}

/// A store that cannot be connected to at all (no such host, a port nobody
/// listens on, TLS to a port that speaks plain http) is named as such, with
/// its endpoint and the reason, and without a hint at the credentials, which
/// were never sent.
#[test]
fn unreachable_endpoints_say_cannot_connect() {
    // A port that answers plain HTTP to anything, TLS handshakes included.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let plain_port = plain.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in plain.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            );
        }
    });
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let env: Vec<(String, String)> = ["STORAGE", "TO"]
        .iter()
        .flat_map(|role| {
            [
                (
                    format!("STARCHIVE_{role}_ACCESS_KEY_ID"),
                    "AKUNREACH".to_string(),
                ),
                (
                    format!("STARCHIVE_{role}_SECRET_ACCESS_KEY"),
                    "UnreachSecret".to_string(),
                ),
            ]
        })
        .collect();
    let cases = [
        (
            "http://no-such-host.invalid:9000".to_string(),
            "dns error",
            "check endpoint=",
        ),
        (
            format!("http://127.0.0.1:{closed_port}"),
            "Connection refused",
            "check endpoint=",
        ),
        (
            format!("https://127.0.0.1:{plain_port}"),
            "InvalidContentType",
            "use an http:// endpoint with allow_http=true",
        ),
    ];
    for (endpoint, reason, hint) in cases {
        let url = format!("s3://bkt/p?endpoint={endpoint}&allow_http=true");
        let cannot =
            format!("{{option}} s3://bkt/p?endpoint={endpoint}: cannot connect to {endpoint}: ");
        every_command_refuses(&url, &env, &[&cannot, reason, hint]);
        let dir = temp_dir();
        let archive = snapshotted(dir.path());
        let out = run(starchive(&archive)
            .args(["push", "--to", &url])
            .envs(env.iter().map(|(k, v)| (k, v))));
        assert!(
            !out.stderr.contains("credentials") && !out.stderr.contains("ACCESS_KEY"),
            "{}",
            out.stderr
        );
    }
}
