//! Command-line definitions (SPEC §3). `--archive`, `--json` and `--env`
//! are global: accepted before or after the command's name.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "starchive",
    version,
    about = "Archive a Telegram sticker bot's files: snapshot its Supabase tables, fetch every sticker once by SHA-256, push to any object store, repair the database.",
    propagate_version = true
)]
pub struct Cli {
    /// The local archive directory [env: STARCHIVE_DIR] [default: ./sticker-archive]
    // STARCHIVE_DIR is read by `archive_dir`, not by clap: clap names an
    // option set from the environment in its usage line, which then makes
    // `--archive` look required in every usage error.
    #[arg(long, global = true, value_name = "ARCHIVE")]
    pub archive: Option<PathBuf>,

    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Only refs whose session has this env (repeatable).
    // An empty NAME would match nothing (an empty env is none): bad usage,
    // refused by `Context::refuse_empty_env`, which names the envs there are.
    #[arg(long = "env", global = true, value_name = "NAME")]
    pub envs: Vec<String>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The archive directory: `--archive`, else `STARCHIVE_DIR` (when set and
    /// not empty), else `./sticker-archive`.
    pub fn archive_dir(&self) -> PathBuf {
        self.archive
            .clone()
            .or_else(|| {
                std::env::var_os("STARCHIVE_DIR")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("./sticker-archive"))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Copy sessions, stickers and pack_batches (every column) into the catalog.
    Snapshot(SnapshotArgs),
    /// Count refs, what is fetched and pending, blobs, and the backfill volumes.
    Plan,
    /// Download every pending ref into the archive's blobs/.
    #[command(after_help = TELEGRAM_HELP)]
    Fetch(FetchArgs),
    /// Upload every fetched ref to a destination store.
    #[command(after_help = TO_HELP)]
    Push(PushArgs),
    /// Re-hash local blobs; with --to, check the destination holds every object.
    Verify(VerifyArgs),
    /// Where every stage stands, with each failure and its reason.
    Status(StatusArgs),
    /// Repair the database: upload what has no storage key and write the key back.
    #[command(after_help = TO_HELP)]
    Backfill(BackfillArgs),
    /// snapshot, fetch and push in one go.
    #[command(after_help = TELEGRAM_HELP)]
    Run(RunArgs),
    /// Hold the archive (and with --storage the bucket) against the database: packs with holes, blobs missing or bad, orphans, dangling keys.
    Check(CheckArgs),
    /// Write a static site of the archive that a browser shows offline.
    Gallery(GalleryArgs),
    /// Rebuild the archive from a destination that push wrote: catalog, then every blob.
    Pull(PullArgs),
}

#[derive(Args, Debug)]
pub struct GalleryArgs {
    /// Where to write the site (default: ARCHIVE/gallery). Replaced on each run.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// How `fetch` finds its Bot API tokens (SPEC §1), shown after its options.
const TELEGRAM_HELP: &str = "\
Telegram tokens (environment only, never on the command line):
  TELEGRAM_BOT_TOKEN        the bot token, for refs of any env
  TELEGRAM_BOT_TOKEN_<ENV>  the token of one env's bot, for that env's refs: the env's
                            name in upper case, every character other than a letter or
                            digit as `_` (env `staging-eu`: TELEGRAM_BOT_TOKEN_STAGING_EU)
A file_id works only with the bot that received it. A Bot API server run with --local
answers with paths on its own disk: starchive reads those files when they are readable
on this machine, and otherwise fails the refs, saying so.";

/// Where `--to` finds its credentials (SPEC §4), shown after its options.
const TO_HELP: &str = "\
Destination credentials (environment only, never in the URL):
  STARCHIVE_TO_ACCESS_KEY_ID      else AWS_ACCESS_KEY_ID
  STARCHIVE_TO_SECRET_ACCESS_KEY  else AWS_SECRET_ACCESS_KEY
  STARCHIVE_TO_SESSION_TOKEN      else AWS_SESSION_TOKEN (temporary credentials)
A destination is what it names, however typed: a directory by its absolute path
(./backup, backup/ and file:///abs/backup are one), an s3:// store by endpoint,
bucket and prefix.";

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub db: DbArg,
}

#[derive(Args, Debug)]
pub struct DbArg {
    /// postgres:// connection string, or a directory of CSV exports.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub db: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Include {
    Photos,
}

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// The source bucket (s3://bucket?endpoint=…, file:///path, or a directory).
    ///
    /// Credentials from STARCHIVE_STORAGE_ACCESS_KEY_ID, STARCHIVE_STORAGE_SECRET_ACCESS_KEY
    /// and STARCHIVE_STORAGE_SESSION_TOKEN, each else its AWS_* variable.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,

    /// Base URL of the Telegram Bot API (a local Bot API server, or a stand-in).
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org",
        value_name = "URL"
    )]
    pub telegram_api: String,

    #[command(flatten)]
    pub jobs: JobsArg,

    /// Also archive users' photos.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub include: Vec<Include>,

    /// Try failed refs again.
    #[arg(long)]
    pub retry_failed: bool,

    /// Refuse files larger than this (bytes; KiB, MiB, GiB accepted).
    #[arg(long, default_value = "50MiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_file_size: u64,

    /// Bot API requests per second at most, per bot (0.001 to 1000000).
    #[arg(long, default_value_t = 20.0, value_parser = parse_rate, value_name = "N")]
    pub telegram_rate: f64,
}

#[derive(Args, Debug)]
pub struct JobsArg {
    /// Transfers in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    Mirror,
    Cas,
}

#[derive(Args, Debug)]
pub struct ToArg {
    /// Destination store (s3://bucket/prefix?endpoint=…, file:///path, or a directory).
    #[arg(long, value_name = "URL")]
    pub to: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub to: ToArg,

    #[command(flatten)]
    pub layout: LayoutArg,

    #[command(flatten)]
    pub jobs: JobsArg,

    /// The largest object of the catalog copy. Hidden: the tests lower it
    /// to get a copy of several parts from a small catalog.
    #[arg(long, hide = true, default_value_t = starchive::manifest::CATALOG_PART_BYTES, value_parser = parse_size)]
    pub catalog_part_size: u64,
}

#[derive(Args, Debug)]
pub struct LayoutArg {
    /// Keys at the destination (default: the layout it holds, else mirror):
    /// `mirror` keeps the bot's storage keys (the bot can switch its storage to
    /// the copy), `cas` stores each file once at blobs/sha256/<first two
    /// hex>/<sha256>. A destination keeps the layout it was first pushed with.
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Also check this destination.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,

    /// Layout to expect (default: the one the destination holds, else mirror; another is refused).
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,

    /// Download every object and check its SHA-256.
    #[arg(long)]
    pub deep: bool,

    #[command(flatten)]
    pub full: FullArg,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub full: FullArg,
}

#[derive(Args, Debug)]
pub struct FullArg {
    /// List every item (a text report otherwise shows the first 20 of each list).
    #[arg(long)]
    pub full: bool,
}

#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub db: DbArg,

    #[command(flatten)]
    pub to: ToArg,

    /// Make the changes (without it: a dry run that prints what would be done).
    #[arg(long)]
    pub apply: bool,

    /// Revert what earlier `--apply` runs wrote.
    #[arg(long)]
    pub undo: bool,

    /// Also add a stickers row for every session sticker that has none.
    #[arg(long)]
    pub sync_stickers: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub db: DbArg,

    #[command(flatten)]
    pub fetch: FetchArgs,

    #[command(flatten)]
    pub to: ToArg,

    #[command(flatten)]
    pub layout: LayoutArg,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also list the bot's bucket (s3://bucket?endpoint=…, file:///path, or a directory) and classify every object.
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,

    /// List every item (a text report otherwise shows the first 20 of each list).
    #[arg(long)]
    pub full: bool,
}

#[derive(Args, Debug)]
#[command(
    after_help = "Credentials of an s3:// store: STARCHIVE_STORAGE_ACCESS_KEY_ID and STARCHIVE_STORAGE_SECRET_ACCESS_KEY (and STARCHIVE_STORAGE_SESSION_TOKEN), each falling back to AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN. Needs no database and no Telegram token."
)]
pub struct PullArgs {
    /// The destination to read, as given to push --to (s3://bucket/prefix?endpoint=…, file:///path, or a directory).
    #[arg(long, value_name = "URL")]
    pub from: String,

    #[command(flatten)]
    pub jobs: JobsArg,
}

/// A request rate within [`starchive::telegram::RATES`]: not 0, negative, NaN,
/// infinite or so small that its interval overflows a clock.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let (low, high) = starchive::telegram::RATES;
    match text.trim().parse::<f64>() {
        Ok(rate) if (low..=high).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give requests per second from {low} to {high}"
        )),
    }
}

/// `1048576`, `512KiB`, `50MiB`, `1 GiB`: at least 1 byte.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 50MiB)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("{text:?}: a size must be at least 1 byte")),
        Some(size) => Ok(size),
        None => Err(format!("{text:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("50MiB"), Ok(50 << 20));
        assert_eq!(parse_size("2 KiB"), Ok(2048));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("5MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("0GiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20"), Ok(20.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in [
            "0", "-1", "nan", "NaN", "inf", "-inf", "1e-20", "1e300", "", "x",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
