//! `fetch`: every pending ref's file into `blobs/`.
//!
//! Order (SPEC §1): refs resolvable from what is already fetched are
//! resolved without a download; then every distinct storage key is read
//! from the bucket once (a key the bucket lacks is marked dangling and its
//! refs fall back to Telegram); then every distinct `file_id` left is asked
//! of Telegram once. So a `file_id` some ref can get from the bucket is never
//! asked of Telegram.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::{Context, TransferReport};
use crate::blobs::{BlobStore, Publisher, Staged, Unfinished, WrongLength};
use crate::catalog::BlobInfo;
use crate::catalog::{self, Catalog};
use crate::download::{ReadError, StageError, credentials_refused, read_object, stage_body};
use crate::error::{Error, Result};
use crate::layout::check_key;
use crate::stores::{self, Role, Store};
use crate::telegram::{FileInfo, Telegram, TgError};
use crate::transfer::{COMMIT_BATCH, backoff, run_units};

pub struct FetchOptions {
    pub storage: Option<String>,
    pub telegram_api: String,
    /// `TELEGRAM_BOT_TOKEN` and `TELEGRAM_BOT_TOKEN_<ENV>`; never printed.
    pub telegram_tokens: TelegramTokens,
    pub jobs: usize,
    pub include_photos: bool,
    pub retry_failed: bool,
    pub max_file_size: u64,
    pub telegram_rate: f64,
}

/// The variable of the default bot token.
pub const TOKEN_VAR: &str = "TELEGRAM_BOT_TOKEN";

/// The Bot API tokens by variable (SPEC §1): `TELEGRAM_BOT_TOKEN_<ENV>` serves
/// the refs of that env, `TELEGRAM_BOT_TOKEN` the others (refs with no env
/// too). A variable set to an empty value counts as unset. Not `Debug`: it
/// holds secrets.
#[derive(Clone, Default)]
pub struct TelegramTokens {
    by_var: BTreeMap<String, String>,
}

impl TelegramTokens {
    /// The tokens among `vars` (such as `std::env::vars_os()`); other variables are ignored.
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> TelegramTokens {
        let by_var = vars
            .into_iter()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, v)| k.starts_with(TOKEN_VAR) && !v.is_empty())
            .collect();
        TelegramTokens { by_var }
    }

    /// The variable that holds the token of `env`'s bot: `staging-eu` ->
    /// `TELEGRAM_BOT_TOKEN_STAGING_EU` (upper case, every character other
    /// than an ASCII letter or digit as `_`).
    pub fn var_for_env(env: &str) -> String {
        let suffix: String = env
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("{TOKEN_VAR}_{suffix}")
    }

    /// The variable and token serving the refs of `env`, if any is set.
    pub fn for_env(&self, env: Option<&str>) -> Option<(&str, &str)> {
        env.and_then(|env| self.by_var.get_key_value(&Self::var_for_env(env)))
            .or_else(|| self.by_var.get_key_value(TOKEN_VAR))
            .map(|(var, token)| (var.as_str(), token.as_str()))
    }
}

/// A Bot API client and the variable its token came from (named in messages).
struct Bot {
    telegram: Telegram,
    var: String,
}

/// One client per distinct token: each bot has its own rate and flood control at Telegram.
#[derive(Default)]
struct Bots(HashMap<String, Arc<Bot>>);

impl Bots {
    fn get(&mut self, var: &str, token: &str, api: &str, rate: f64) -> Result<Arc<Bot>> {
        if let Some(bot) = self.0.get(token) {
            return Ok(bot.clone());
        }
        let telegram = Telegram::new(api, token.to_string(), rate).map_err(Error::Config)?;
        let bot = Arc::new(Bot {
            telegram,
            var: var.to_string(),
        });
        self.0.insert(token.to_string(), bot.clone());
        Ok(bot)
    }
}

/// One `file_id` to ask Telegram for, the refs it serves (its pending refs
/// of `envs`, the first of which is `first`) and the bots to ask (those of
/// the refs' envs, in the order the refs come).
struct TelegramWork {
    file_id: String,
    first: i64,
    envs: Vec<Option<String>>,
    bots: Vec<Arc<Bot>>,
}

/// Why refs that only Telegram can serve are left pending: no token for their env.
fn tokenless_note(left: &[catalog::fetch::FileIdWork], tokens: &TelegramTokens) -> Option<String> {
    let mut n = 0;
    let mut vars = BTreeSet::new();
    for refs in left.iter().flat_map(|w| &w.envs) {
        if tokens.for_env(refs.env.as_deref()).is_none() {
            n += refs.refs;
            if let Some(env) = &refs.env {
                vars.insert(TelegramTokens::var_for_env(env));
            }
        }
    }
    if n == 0 {
        return None;
    }
    let per_env = if vars.is_empty() {
        String::new()
    } else {
        format!(
            " (or, for their env, {})",
            vars.into_iter().collect::<Vec<_>>().join(", ")
        )
    };
    Some(format!(
        "{n} refs can only come from Telegram: set {TOKEN_VAR}{per_env} to fetch them"
    ))
}

/// For each env whose refs failed with Telegram's `wrong file_id` while its
/// own token variable is unset (they were asked of the default bot, which
/// cannot read another bot's files): the variable to set.
pub fn wrong_bot_notes(failures: &[(String, u64)], tokens: &TelegramTokens) -> Vec<String> {
    failures
        .iter()
        .filter_map(|(env, n)| {
            let var = TelegramTokens::var_for_env(env);
            (!tokens.by_var.contains_key(&var)).then(|| {
                format!(
                    "{n} refs of env {env} failed with Telegram's \"wrong file_id\": {var} is \
                     unset, so they were asked of the bot of {TOKEN_VAR}, and a file_id is good \
                     only for the bot that received it; if env {env} has its own bot, set {var} \
                     to its token and run fetch --retry-failed"
                )
            })
        })
        .collect()
}

/// The refs a unit downloads for: their ids (a bucket key's), or the
/// pending refs of a Telegram file in some envs, read from the catalog only
/// if they fail: a file shared by a million refs holds no million ids.
enum Refs {
    Ids(Vec<i64>),
    File {
        file_id: String,
        first: i64,
        envs: Vec<Option<String>>,
    },
}

impl Refs {
    /// The ref that takes a downloaded blob (the others are resolved from it).
    fn first(&self) -> Option<i64> {
        match self {
            Refs::Ids(ids) => ids.first().copied(),
            Refs::File { first, .. } => Some(*first),
        }
    }

    /// Every ref, by id.
    fn ids(self, conn: &rusqlite::Connection) -> Result<Vec<i64>> {
        match self {
            Refs::Ids(ids) => Ok(ids),
            Refs::File { file_id, envs, .. } => catalog::fetch::file_id_refs(conn, &file_id, &envs),
        }
    }
}

/// What one download did.
enum Outcome {
    Fetched {
        refs: Refs,
        blob: BlobInfo,
        source: &'static str,
    },
    Dangling {
        refs: Refs,
    },
    Failed {
        refs: Refs,
        reason: String,
    },
    /// The bucket will not serve the key ([`ReadError::Unreadable`]): its
    /// refs with a file_id fall back to Telegram as for a missing key, the
    /// others fail with the reason.
    Unreadable {
        refs: Refs,
        reason: String,
    },
    /// A configuration error (the token or the bucket's credentials are
    /// refused): stop, with this message.
    Fatal(String),
    /// The Bot API cannot be reached: no more is asked of it this run, its
    /// refs stay pending, and the report says why (exit 3).
    Unreachable(String),
    /// Not tried because the run is stopping.
    Cancelled,
}

/// Why the downloads stopped before their end, if they did.
#[derive(Default)]
struct Stopped {
    /// A configuration error: the fetch fails with it (exit 1).
    fatal: Option<String>,
    /// The Bot API could not be reached: the report says so (exit 3).
    unreachable: Option<String>,
}

/// A download whose bytes are staged, to be published for its refs.
struct Downloaded {
    staged: Staged,
    refs: Refs,
    source: &'static str,
}

const ATTEMPTS: u32 = 5;
const MAX_FLOOD_WAITS: u32 = 30;

/// What every download of a run shares.
struct Shared {
    blobs: BlobStore,
    publisher: Publisher,
    /// `--jobs` permits: a unit holds one until its bytes are staged (or it
    /// gave up); a blob that waits for its group to be durable holds none,
    /// so the next download starts meanwhile.
    downloads: Semaphore,
    /// Set by a configuration error: units not started yet are cancelled.
    stop: AtomicBool,
    bytes: AtomicU64,
    max: u64,
}

impl Shared {
    /// One unit: its download (with a permit), then the publication of its
    /// blob (without).
    async fn fetch_unit(
        &self,
        download: impl std::future::Future<Output = Result<Downloaded, Outcome>>,
    ) -> Outcome {
        let Ok(permit) = self.downloads.acquire().await else {
            // Never closed; cancelling would be the answer if it were.
            return Outcome::Cancelled;
        };
        if self.stop.load(Ordering::Relaxed) {
            return Outcome::Cancelled;
        }
        let Downloaded {
            staged,
            refs,
            source,
        } = match download.await {
            Ok(downloaded) => downloaded,
            Err(outcome) => {
                // Before the permit goes: no other download starts.
                if matches!(outcome, Outcome::Fatal(_) | Outcome::Unreachable(_)) {
                    self.stop.store(true, Ordering::Relaxed);
                }
                return outcome;
            }
        };
        drop(permit);
        match self.publisher.publish(staged).await {
            Ok(blob) => {
                self.bytes.fetch_add(blob.size, Ordering::Relaxed);
                Outcome::Fetched { refs, blob, source }
            }
            Err(e) if e.disk_refuses() => {
                self.stop.store(true, Ordering::Relaxed);
                Outcome::Fatal(super::disk_stop(&e, "fetch"))
            }
            Err(e) => Outcome::Failed {
                refs,
                reason: e.to_string(),
            },
        }
    }
}

/// Units in flight beyond `--jobs`: those whose blob waits for its group.
const PUBLISHING: usize = COMMIT_BATCH;

pub fn fetch(ctx: &Context, opts: &FetchOptions) -> Result<TransferReport> {
    let started = Instant::now();
    crate::telegram::check_api_url(&opts.telegram_api).map_err(Error::Usage)?;
    let mut catalog = Catalog::open_existing(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    let storage = opts
        .storage
        .as_deref()
        .map(|url| stores::open(url, Role::Storage))
        .transpose()?;
    let blobs = BlobStore::new(&ctx.archive);
    blobs.clear_staging()?;
    let shared = Arc::new(Shared {
        publisher: blobs.publisher()?,
        blobs,
        downloads: Semaphore::new(opts.jobs.max(1)),
        stop: AtomicBool::new(false),
        bytes: AtomicU64::new(0),
        max: opts.max_file_size,
    });
    let envs = ctx.env_param();

    if opts.include_photos {
        let tx = catalog.conn_mut().transaction()?;
        catalog::set_setting(&tx, catalog::INCLUDE_PHOTOS, "true")?;
        catalog::derive::derive(&tx, true)?;
        tx.commit()?;
    }
    if opts.retry_failed {
        catalog::fetch::retry_failed(catalog.conn(), &envs)?;
    }
    if storage.is_some() {
        catalog::fetch::retry_dangling(catalog.conn(), &envs)?;
    }
    let (fetched_before, _, _) = catalog::fetch::state_counts(catalog.conn(), &envs)?;
    let mut stopped = Stopped::default();
    let mut notes = Vec::new();

    catalog::fetch::resolve_known(catalog.conn(), &envs)?;

    // A key that could leave a root fails its refs before anything is read,
    // with or without a bucket (SPEC §7): such a ref is never downloaded.
    let mut keys = Vec::new();
    let mut unsafe_keys = Vec::new();
    for work in catalog::fetch::pending_keys(catalog.conn(), &envs)? {
        match check_key(&work.key) {
            Ok(()) => keys.push(work),
            Err(reason) => unsafe_keys.push(Outcome::Failed {
                refs: Refs::Ids(work.refs),
                reason,
            }),
        }
    }
    // A bucket that cannot serve stops the run before any ref is marked.
    if let Some(store) = &storage
        && !keys.is_empty()
    {
        ctx.runtime.block_on(stores::check(store, Role::Storage))?;
    }
    if !unsafe_keys.is_empty() {
        commit(&mut catalog, unsafe_keys, &mut stopped)?;
    }

    // The bucket, once per key.
    match &storage {
        Some(store) if !keys.is_empty() => {
            let tried = keys.len();
            let phase = Phase {
                ctx,
                jobs: opts.jobs,
                shared: &shared,
            };
            let reader = store.clone();
            let missing = phase.run(
                "from the bucket",
                keys,
                &mut catalog,
                &mut stopped,
                move |shared, work| {
                    let store = reader.clone();
                    async move { from_bucket(&store, &shared, work.key, work.refs).await }
                },
            )?;
            // Only when no key the rows name was found: one key missing
            // beside others read is a dangling key, not a wrong prefix.
            if missing == tried
                && stopped.fatal.is_none()
                && !catalog::fetch::any_read_from_bucket(catalog.conn(), &envs)?
                && let Some(hint) = missing_hint(ctx, catalog.conn(), &envs, store, tried as u64)?
            {
                notes.push(hint);
            }
        }
        None if !keys.is_empty() => {
            let n: usize = keys.iter().map(|k| k.refs.len()).sum();
            notes.push(format!(
                "{n} refs have a storage key: pass --storage URL (the bot's bucket) to fetch them"
            ));
        }
        _ => {}
    }
    catalog::fetch::fail_unservable(catalog.conn(), &envs)?;
    catalog::fetch::resolve_known(catalog.conn(), &envs)?;

    // Telegram, once per file_id, through the bot of the refs' env.
    let file_ids = catalog::fetch::pending_file_ids(catalog.conn(), &envs)?;
    if !file_ids.is_empty() && stopped.fatal.is_none() {
        let mut bots = Bots::default();
        let mut units = Vec::with_capacity(file_ids.len());
        for work in file_ids {
            let mut unit = TelegramWork {
                file_id: work.file_id,
                first: i64::MAX,
                envs: Vec::new(),
                bots: Vec::new(),
            };
            for refs in work.envs {
                let Some((var, token)) = opts.telegram_tokens.for_env(refs.env.as_deref()) else {
                    continue;
                };
                let bot = bots.get(var, token, &opts.telegram_api, opts.telegram_rate)?;
                if !unit.bots.iter().any(|b| Arc::ptr_eq(b, &bot)) {
                    unit.bots.push(bot);
                }
                unit.first = unit.first.min(refs.first);
                unit.envs.push(refs.env);
            }
            if !unit.envs.is_empty() {
                units.push(unit);
            }
        }
        if !units.is_empty() {
            let phase = Phase {
                ctx,
                jobs: opts.jobs,
                shared: &shared,
            };
            phase.run(
                "from Telegram",
                units,
                &mut catalog,
                &mut stopped,
                |shared, work| async move { from_telegram(work, &shared).await },
            )?;
            // Refs of an env without a token whose file_id another env's bot served.
            catalog::fetch::resolve_known(catalog.conn(), &envs)?;
        }
        if stopped.fatal.is_none()
            && stopped.unreachable.is_none()
            && let Some(note) = tokenless_note(
                &catalog::fetch::pending_file_ids(catalog.conn(), &envs)?,
                &opts.telegram_tokens,
            )
        {
            notes.push(note);
        }
    }
    if let Some(message) = stopped.fatal {
        return Err(Error::Config(message));
    }
    notes.extend(wrong_bot_notes(
        &catalog::fetch::wrong_file_id_failures(catalog.conn(), &envs)?,
        &opts.telegram_tokens,
    ));
    if let Some(message) = &stopped.unreachable {
        tracing::warn!("{message}");
    }
    let (fetched, failed, pending) = catalog::fetch::state_counts(catalog.conn(), &envs)?;
    Ok(TransferReport {
        done: fetched.saturating_sub(fetched_before),
        skipped: fetched_before,
        failed,
        pending,
        bytes: shared.bytes.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        notes,
        refused: Vec::new(),
        stopped: stopped.unreachable,
    })
}

/// One stage of downloads: `work` downloads every unit, at most `jobs` at
/// once (and [`PUBLISHING`] more units wait for their blob to be durable),
/// until one of them meets a configuration error (then the rest are
/// skipped); outcomes are committed as they come. [`Phase::run`] returns
/// how many units found their key missing in the bucket.
struct Phase<'a> {
    ctx: &'a Context,
    jobs: usize,
    shared: &'a Arc<Shared>,
}

impl Phase<'_> {
    fn run<U, F, Fut>(
        &self,
        stage: &str,
        units: Vec<U>,
        catalog: &mut Catalog,
        stopped: &mut Stopped,
        work: F,
    ) -> Result<usize>
    where
        U: Send + 'static,
        F: Fn(Arc<Shared>, U) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Downloaded, Outcome>> + Send + 'static,
    {
        self.ctx.progress.start(stage, Some(units.len() as u64));
        let shared = self.shared.clone();
        let mut missing = 0;
        run_units(
            &self.ctx.runtime,
            self.ctx.progress.as_ref(),
            units.into_iter().map(Ok),
            self.jobs.max(1) + PUBLISHING,
            move |unit| {
                let shared = shared.clone();
                let download = work(shared.clone(), unit);
                async move { shared.fetch_unit(download).await }
            },
            |batch| {
                missing += batch
                    .iter()
                    .filter(|o| matches!(o, Outcome::Dangling { .. }))
                    .count();
                commit(catalog, batch, stopped)
            },
        )?;
        self.ctx.progress.finish();
        Ok(missing)
    }
}

/// The hint when none of the keys read from the bucket was there (as
/// `check --storage` gives it): the bucket is listed for a sample of its
/// keys, to see whether the rows' keys sit under another prefix.
fn missing_hint(
    ctx: &Context,
    conn: &rusqlite::Connection,
    envs: &Option<String>,
    store: &Store,
    keys: u64,
) -> Result<Option<String>> {
    use futures::StreamExt;
    let sample: Option<Vec<String>> = ctx.runtime.block_on(async {
        let mut listing = store.list_keys().take(stores::hint::HINT_SAMPLE);
        let mut keys = Vec::new();
        while let Some(object) = listing.next().await {
            // A bucket that cannot be listed still gets the plain hint.
            keys.push(object.ok()?.0);
        }
        Some(keys)
    });
    stores::hint::prefix_hint(store, keys, None, sample.as_deref(), |candidates| {
        catalog::fetch::named_among(conn, envs, candidates)
    })
}

fn commit(catalog: &mut Catalog, batch: Vec<Outcome>, stopped: &mut Stopped) -> Result<()> {
    let tx = catalog.conn_mut().transaction()?;
    for outcome in batch {
        match outcome {
            // One ref of the unit takes the blob here; the others (on the
            // same key or file_id) are resolved from it in one pass after
            // the phase (`resolve_known`), or first thing in the next run
            // after a kill. Marked here, a million refs on a thousand
            // file_ids rewrote most pages of `refs` at every commit.
            Outcome::Fetched { refs, blob, source } => {
                let first: Vec<i64> = refs.first().into_iter().collect();
                catalog::fetch::mark_fetched(&tx, &first, &blob, source)?
            }
            Outcome::Dangling { refs } => catalog::fetch::mark_dangling(&tx, &refs.ids(&tx)?)?,
            Outcome::Failed { refs, reason } => {
                let refs = refs.ids(&tx)?;
                let names = catalog::fetch::ref_names(&tx, &refs)?;
                tracing::warn!("fetch failed for {names}: {reason}");
                catalog::fetch::mark_failed(&tx, &refs, &reason)?
            }
            Outcome::Unreadable { refs, reason } => {
                let refs = refs.ids(&tx)?;
                let names = catalog::fetch::ref_names(&tx, &refs)?;
                tracing::warn!(
                    "{reason}: the bucket cannot serve this key; {names} fall back to the file_id"
                );
                catalog::fetch::mark_unreadable(&tx, &refs, &reason)?
            }
            Outcome::Fatal(reason) => stopped.fatal = Some(reason),
            Outcome::Unreachable(reason) => stopped.unreachable = Some(reason),
            Outcome::Cancelled => {}
        }
    }
    tx.commit()?;
    Ok(())
}

async fn from_bucket(
    store: &Store,
    shared: &Shared,
    key: String,
    refs: Vec<i64>,
) -> Result<Downloaded, Outcome> {
    let refs = Refs::Ids(refs);
    if let Err(reason) = check_key(&key) {
        return Err(Outcome::Failed { refs, reason });
    }
    let path = match store.path(&key) {
        Ok(p) => p,
        Err(reason) => return Err(Outcome::Failed { refs, reason }),
    };
    // Only what object_store does not retry itself comes back as
    // `ReadError::Again` (see there): a few more attempts for that, never
    // attempts on top of its own retries.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let reason = match read_object(store, &shared.blobs, &path, &key, shared.max, "bucket")
            .await
        {
            Ok(staged) => {
                return Ok(Downloaded {
                    staged,
                    refs,
                    source: "bucket",
                });
            }
            Err(ReadError::Missing) => return Err(Outcome::Dangling { refs }),
            Err(ReadError::TooBig(size)) => {
                return Err(Outcome::Failed {
                    refs,
                    reason: too_big(size, shared.max),
                });
            }
            Err(ReadError::Refused(e)) => return Err(refused(store, key, refs, e)),
            Err(ReadError::Failed(reason)) => return Err(Outcome::Failed { refs, reason }),
            Err(ReadError::Unreadable(reason)) => {
                return Err(Outcome::Unreadable { refs, reason });
            }
            Err(ReadError::Disk(e)) => return Err(Outcome::Fatal(super::disk_stop(&e, "fetch"))),
            Err(ReadError::Again(reason)) => reason,
        };
        if attempt >= ATTEMPTS {
            return Err(Outcome::Failed { refs, reason });
        }
        tracing::debug!("{reason}; retrying");
        tokio::time::sleep(backoff(
            attempt,
            Duration::from_millis(200),
            Duration::from_secs(5),
        ))
        .await;
    }
}

/// Asks the unit's bots for its file until one serves it. A bot that
/// refuses the file for good is not asked again; when every bot refused, the
/// refs fail with the last refusal. Passing faults (5xx, resets, truncated
/// bodies, "temporarily unavailable") are retried with backoff, a round of
/// every bot left per attempt.
async fn from_telegram(work: TelegramWork, shared: &Shared) -> Result<Downloaded, Outcome> {
    let TelegramWork {
        file_id,
        first,
        envs,
        mut bots,
    } = work;
    let refs = Refs::File {
        file_id: file_id.clone(),
        first,
        envs,
    };
    let mut attempt = 0u32;
    let mut flood_waits = 0u32;
    let mut unreachable = 0u32;
    let mut last_error = String::new();
    let mut refusal = String::new();
    while attempt < ATTEMPTS && !bots.is_empty() {
        // Wait before the next round: only a fresh link is asked for at once.
        let mut wait = false;
        let mut i = 0;
        while i < bots.len() {
            let bot = bots[i].clone();
            let error = match download_once(&bot.telegram, shared, &file_id).await {
                Ok(staged) => {
                    return Ok(Downloaded {
                        staged,
                        refs,
                        source: "telegram",
                    });
                }
                Err(Attempt::Disk(e)) => return Err(Outcome::Fatal(super::disk_stop(&e, "fetch"))),
                Err(Attempt::Telegram(e)) => e,
            };
            match error {
                TgError::Refused(reason) => {
                    refusal = reason;
                    bots.remove(i);
                    continue;
                }
                TgError::Unauthorized(reason) => {
                    let var = &bot.var;
                    return Err(Outcome::Fatal(format!(
                        "the Telegram Bot API refused the token of {var} ({reason}): check {var}; what was fetched stays fetched"
                    )));
                }
                TgError::RetryAfter(pause) => {
                    flood_waits += 1;
                    if flood_waits > MAX_FLOOD_WAITS {
                        return Err(Outcome::Failed {
                            refs,
                            reason: "Telegram: too many flood-control waits".into(),
                        });
                    }
                    tracing::info!(
                        "Telegram asks to wait {} s (flood control)",
                        pause.as_secs()
                    );
                    bot.telegram.pause(pause);
                    // The same bot again, once the pause is over.
                    continue;
                }
                TgError::LinkExpired => {
                    last_error = "the download link expired again".into();
                }
                TgError::Unreachable(reason) => {
                    unreachable += 1;
                    if unreachable >= ATTEMPTS {
                        // Every attempt found no server: no file can be had
                        // from Telegram this run, but what the bucket gave
                        // stays fetched and can be pushed. The refs left are
                        // pending, not failed: the next fetch tries them.
                        return Err(Outcome::Unreachable(format!(
                            "cannot reach the Telegram Bot API at {} (getFile: {reason}): the refs it was to serve are still pending; check --telegram-api / TELEGRAM_API_URL and the network, then fetch again",
                            bot.telegram.shown_base()
                        )));
                    }
                    tracing::debug!("{file_id}: {reason}; retrying");
                    last_error = reason;
                    wait = true;
                }
                TgError::Transient(reason)
                | TgError::Unavailable(reason)
                | TgError::NotBotApi(reason) => {
                    tracing::debug!("{file_id}: {reason}; retrying");
                    last_error = reason;
                    wait = true;
                }
            }
            i += 1;
        }
        if bots.is_empty() {
            break;
        }
        attempt += 1;
        if wait && attempt < ATTEMPTS {
            tokio::time::sleep(backoff(
                attempt,
                Duration::from_millis(250),
                Duration::from_secs(8),
            ))
            .await;
        }
    }
    if let Some(bot) = bots.first()
        && bots.iter().all(|b| !b.telegram.ever_answered())
    {
        // Not one Bot API answer this run: the server is not the Bot API or
        // is failing, and no ref would fare better. Stop, leaving them pending.
        return Err(Outcome::Fatal(format!(
            "the Telegram Bot API at {} gave no usable answer ({last_error}, after {ATTEMPTS} attempts): it is not a Bot API server or is failing: check --telegram-api / TELEGRAM_API_URL; what was fetched stays fetched",
            bot.telegram.shown_base()
        )));
    }
    let reason = if bots.is_empty() {
        format!("Telegram: {refusal}")
    } else {
        format!("Telegram: {last_error} (after {ATTEMPTS} attempts)")
    };
    Err(Outcome::Failed { refs, reason })
}

/// Why one download from Telegram gave no blob.
enum Attempt {
    Telegram(TgError),
    /// The archive's disk refused the staging file ([`Error::disk_refuses`]).
    Disk(Error),
}

impl From<TgError> for Attempt {
    fn from(e: TgError) -> Self {
        Attempt::Telegram(e)
    }
}

/// getFile, then the download (or, from a local Bot API server, the read)
/// into a staged blob.
async fn download_once(
    telegram: &Telegram,
    shared: &Shared,
    file_id: &str,
) -> Result<Staged, Attempt> {
    let max = shared.max;
    let info = telegram.get_file(file_id).await?;
    if let Some(size) = info.file_size.filter(|s| *s > max) {
        return Err(TgError::Refused(too_big(size, max)).into());
    }
    if Path::new(&info.file_path).is_absolute() {
        return read_local(telegram, &shared.blobs, info, max).await;
    }
    let response = telegram.download(&info.file_path).await?;
    let announced = response.content_length().or(info.file_size);
    // getFile's file_size is what the file is: a body of another length is
    // never stored, whatever the download's Content-Length says.
    let expected = info.file_size.or(announced);
    if let Some(size) = announced.filter(|s| *s > max) {
        return Err(TgError::Refused(too_big(size, max)).into());
    }
    let body = response.bytes_stream();
    stage_body(&shared.blobs, body, max, expected)
        .await
        .map_err(|e| match e {
            StageError::Body(e) => telegram.download_failed(e, None).into(),
            StageError::TooBig(size) => TgError::Refused(too_big(size, max)).into(),
            StageError::Disk(e) if e.disk_refuses() => Attempt::Disk(e),
            StageError::Disk(e) => TgError::Transient(e.to_string()).into(),
            StageError::Length(WrongLength { expected, got }) => TgError::Transient(format!(
                "the body has {got} bytes where {expected} were announced"
            ))
            .into(),
        })
}

/// A Bot API server run with `--local` names the file on its own disk
/// (`/var/lib/telegram-bot-api/<TOKEN>/stickers/file_0.webp`) and serves no
/// download: the file is read when this machine can, else the ref fails at
/// once. Every text that shows the path has the token scrubbed.
async fn read_local(
    telegram: &Telegram,
    blobs: &BlobStore,
    info: FileInfo,
    max: u64,
) -> Result<Staged, Attempt> {
    let shown = telegram.scrub(&info.file_path);
    // The server's own directory, named plainly: no `..` to climb out of it.
    if Path::new(&info.file_path)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(TgError::Refused(format!(
            "the Bot API server gave an unsafe file_path {shown:?} (with ..)"
        ))
        .into());
    }
    let mut staging = blobs.stage();
    let read = crate::blocking::run(move || -> Result<Staged, LocalError> {
        let mut file = std::fs::File::open(&info.file_path).map_err(LocalError::Open)?;
        let mut buf = vec![0u8; LOCAL_CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LocalError::Read(e.to_string())),
            };
            if staging.size() + n as u64 > max {
                return Err(LocalError::TooBig(staging.size() + n as u64));
            }
            staging.write(&buf[..n]).map_err(LocalError::Disk)?;
        }
        staging.finish(info.file_size).map_err(|e| match e {
            Unfinished::Disk(e) => LocalError::Disk(e),
            e => LocalError::Read(e.to_string()),
        })
    })
    .await
    .map_err(|e| TgError::Transient(format!("reading {shown} stopped: {e}")))?;
    read.map_err(|e| match e {
        LocalError::Open(e) => TgError::Refused(telegram.scrub(&format!(
            "the Bot API server runs with --local and keeps this file at {shown}, which cannot be read on this machine ({e}): run starchive where that directory is readable"
        )))
        .into(),
        LocalError::TooBig(size) => TgError::Refused(too_big(size, max)).into(),
        LocalError::Disk(e) if e.disk_refuses() => Attempt::Disk(e),
        LocalError::Disk(e) => TgError::Transient(e.to_string()).into(),
        LocalError::Read(e) => TgError::Transient(telegram.scrub(&format!("{shown}: {e}"))).into(),
    })
}

/// Bytes read from a local Bot API server's file at a time.
const LOCAL_CHUNK: usize = 256 << 10;

/// How reading a local Bot API server's file failed.
enum LocalError {
    /// Not readable here: the ref fails at once.
    Open(std::io::Error),
    /// Larger than `--max-file-size` (bytes read so far).
    TooBig(u64),
    /// Failed midway or does not match `file_size`: tried again.
    Read(String),
    /// The staging file could not be written.
    Disk(Error),
}

/// 401/403 from the bucket. Refused credentials stop the run (nothing else
/// would work); any other refusal (a policy on one key; S3 also answers 403
/// for a missing key when listing is not allowed) fails that key's refs.
/// Neither is retried.
fn refused(store: &Store, key: String, refs: Refs, e: object_store::Error) -> Outcome {
    let text = crate::download::describe(&e);
    if credentials_refused(&e) {
        Outcome::Fatal(format!(
            "the bucket {} refused the credentials ({text}): check STARCHIVE_STORAGE_ACCESS_KEY_ID and STARCHIVE_STORAGE_SECRET_ACCESS_KEY (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); what was fetched stays fetched",
            store.shown
        ))
    } else {
        Outcome::Failed {
            refs,
            reason: format!("bucket {key}: {text}"),
        }
    }
}

fn too_big(size: u64, max: u64) -> String {
    format!("the file has {size} bytes, more than --max-file-size ({max} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(vars: &[(&str, &str)]) -> TelegramTokens {
        TelegramTokens::from_vars(vars.iter().map(|(k, v)| (k.into(), v.into())))
    }

    #[test]
    fn an_envs_variable_is_its_name_in_upper_case_with_underscores() {
        for (env, var) in [
            ("prod", "TELEGRAM_BOT_TOKEN_PROD"),
            ("staging-eu", "TELEGRAM_BOT_TOKEN_STAGING_EU"),
            ("Test.v2 β", "TELEGRAM_BOT_TOKEN_TEST_V2__"),
        ] {
            assert_eq!(TelegramTokens::var_for_env(env), var);
        }
    }

    #[test]
    fn an_envs_token_overrides_the_default_one() {
        let t = tokens(&[
            ("TELEGRAM_BOT_TOKEN", "1:default"),
            ("TELEGRAM_BOT_TOKEN_STAGING_EU", "2:eu"),
            ("TELEGRAM_BOT_TOKEN_TEST", ""),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            t.for_env(Some("staging-eu")),
            Some(("TELEGRAM_BOT_TOKEN_STAGING_EU", "2:eu"))
        );
        assert_eq!(
            t.for_env(Some("prod")),
            Some(("TELEGRAM_BOT_TOKEN", "1:default"))
        );
        assert_eq!(
            t.for_env(Some("test")),
            Some(("TELEGRAM_BOT_TOKEN", "1:default")),
            "an empty variable counts as unset"
        );
        assert_eq!(t.for_env(None), Some(("TELEGRAM_BOT_TOKEN", "1:default")));
        let only_eu = tokens(&[("TELEGRAM_BOT_TOKEN_STAGING_EU", "2:eu")]);
        assert_eq!(only_eu.for_env(Some("prod")), None);
        assert_eq!(only_eu.for_env(None), None);
    }
}
