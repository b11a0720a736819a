//! `verify`: re-hash the local blobs; with `--to`, check that the destination
//! holds every object it should, with the right size and sha256 metadata
//! (`--deep`: the right bytes, hashed as they stream).

use std::sync::Arc;

use serde::Serialize;

use super::Context;
use crate::blobs::BlobStore;
use crate::catalog::push as q;
use crate::catalog::{Catalog, paged};
use crate::error::{ExitStatus, Result};
use crate::layout::Layout;
use crate::object_check::{Check, inspect_object};
use crate::placement::{build_plan, held_layout, manifest_envs};
use crate::stores::{self, Role};
use crate::transfer::run_units;

pub struct VerifyOptions {
    pub to: Option<String>,
    /// `--layout`: refused unless it is the one the destination holds
    /// ([`held_layout`]); `None`: that one, else mirror.
    pub layout: Option<Layout>,
    pub deep: bool,
    /// The text report lists every problem, not only the first ones.
    pub full: bool,
    pub jobs: usize,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    /// `blob` (local) or `object` (destination).
    pub what: &'static str,
    pub name: String,
    pub problem: String,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub blobs_bad: u64,
    pub objects_checked: u64,
    pub objects_missing: u64,
    pub objects_bad: u64,
    /// Refs put back to pending because their blob is missing or bad.
    pub refs_to_fetch_again: u64,
    /// Objects marked so that the next `push` uploads them again.
    pub objects_to_push_again: u64,
    pub problems: Vec<Problem>,
    /// The text report lists every problem (`--full`).
    #[serde(skip)]
    pub full: bool,
    /// A destination was checked (`--to`).
    #[serde(skip)]
    pub to: bool,
}

const BLOB: &str = "blob";
const OBJECT: &str = "object";
/// Planned objects read from the catalog at a time.
const OBJECTS_PAGE: usize = 1024;

impl VerifyReport {
    /// Counts one check of a local blob ([`BLOB`]) or a destination object ([`OBJECT`]).
    fn record(&mut self, what: &'static str, name: String, check: Check) {
        let blob = what == BLOB;
        *if blob {
            &mut self.blobs_checked
        } else {
            &mut self.objects_checked
        } += 1;
        let problem = match check {
            Check::Good => return,
            Check::Missing(p) if !blob => {
                self.objects_missing += 1;
                p
            }
            Check::Missing(p) | Check::Bad(p) => {
                *if blob {
                    &mut self.blobs_bad
                } else {
                    &mut self.objects_bad
                } += 1;
                p
            }
        };
        self.problems.push(Problem {
            what,
            name,
            problem,
        });
    }

    /// Incomplete when a blob is bad or an object missing or bad.
    pub fn exit_status(&self) -> ExitStatus {
        ExitStatus::incomplete_if(self.blobs_bad + self.objects_missing + self.objects_bad > 0)
    }
}

pub fn verify(ctx: &Context, opts: &VerifyOptions) -> Result<VerifyReport> {
    let mut catalog = Catalog::open_existing(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    let envs = ctx.env_param();
    // A destination that cannot serve, or a wrong --layout, is said before
    // the blobs are re-hashed.
    // The plan of what the destination should hold is made before a bad
    // blob is forgotten: its object is checked too, against the catalog's
    // sha256 and size. A destination should hold what push placed there
    // (only the envs pushed there); one this archive never pushed to, what
    // a push would place of the envs its manifest says it holds.
    let dest = match &opts.to {
        Some(url) => {
            let dest = stores::open(url, Role::To)?;
            ctx.runtime.block_on(stores::check(&dest, Role::To))?;
            let layout = held_layout(&ctx.runtime, &dest, catalog.conn(), opts.layout, true, None)?;
            let recorded =
                q::find_destination(catalog.conn(), &dest.shown, crate::store_url::identity)?;
            let (placed_at, plan_envs) = match &recorded {
                Some((id, _)) if q::has_placements(catalog.conn(), *id)? => {
                    (Some(*id), envs.clone())
                }
                _ => (None, within(&ctx.envs, manifest_envs(&ctx.runtime, &dest)?)),
            };
            let tx = catalog.conn_mut().transaction()?;
            build_plan(&tx, &plan_envs, placed_at, layout)?;
            if let Some(dest) = placed_at {
                crate::catalog::verify::add_recorded_objects_to_plan(&tx, &plan_envs, dest)?;
            }
            tx.commit()?;
            Some((dest, recorded))
        }
        None => None,
    };
    let mut report = VerifyReport {
        full: opts.full,
        to: dest.is_some(),
        ..VerifyReport::default()
    };

    let blobs = crate::catalog::verify::blobs_to_rehash(catalog.conn(), &envs)?;
    let store = Arc::new(BlobStore::new(&ctx.archive));
    let blob_store = store.clone();
    let mut bad_blobs = Vec::new();
    ctx.progress
        .start("re-hashing blobs", Some(blobs.len() as u64));
    run_units(
        &ctx.runtime,
        ctx.progress.as_ref(),
        blobs.into_iter().map(Ok),
        opts.jobs,
        move |(sha, size)| {
            let store = store.clone();
            async move {
                let check = crate::blocking::run({
                    let sha = sha.clone();
                    move || match store.rehash(&sha) {
                        Ok(None) => Check::Missing("missing from blobs/".into()),
                        Ok(Some((got, n))) if got == sha && n == size => Check::Good,
                        Ok(Some((got, n))) => Check::Bad(format!(
                            "{n} bytes hashing to {got}, expected {size} bytes hashing to {sha}"
                        )),
                        Err(e) => Check::Bad(e.to_string()),
                    }
                })
                .await
                .unwrap_or_else(|e| Check::Bad(e.to_string()));
                (sha, check)
            }
        },
        |batch| {
            for (sha, check) in batch {
                if !matches!(check, Check::Good) {
                    bad_blobs.push(sha.clone());
                }
                report.record(BLOB, sha, check);
            }
            Ok(())
        },
    )?;
    ctx.progress.finish();
    if !bad_blobs.is_empty() {
        report.refs_to_fetch_again = forget_blobs(&mut catalog, &blob_store, &bad_blobs)?;
    }

    if let Some((dest, recorded)) = dest {
        let conn = catalog.conn();
        ctx.progress.start(
            "checking the destination",
            Some(q::planned_object_count(conn)?),
        );
        let mut after: Option<String> = None;
        let objects = paged(move || {
            let page = q::planned_objects_after(conn, after.as_deref(), OBJECTS_PAGE)?;
            after = page.last().map(|o| o.key.clone());
            Ok(page)
        });
        let deep = opts.deep;
        let dest = Arc::new(dest);
        let mut bad_objects = Vec::new();
        run_units(
            &ctx.runtime,
            ctx.progress.as_ref(),
            objects,
            opts.jobs,
            move |object| {
                let dest = dest.clone();
                async move {
                    let check =
                        inspect_object(&dest, &object.key, &object.sha256, object.size, deep, true)
                            .await;
                    (object.key, check)
                }
            },
            |batch| {
                for (key, check) in batch {
                    match &check {
                        Check::Good => {}
                        Check::Missing(p) => bad_objects.push((key.clone(), true, p.clone())),
                        Check::Bad(p) => bad_objects.push((key.clone(), false, p.clone())),
                    }
                    report.record(OBJECT, key, check);
                }
                Ok(())
            },
        )?;
        ctx.progress.finish();
        if let (false, Some((dest, _))) = (bad_objects.is_empty(), recorded) {
            report.objects_to_push_again = mark_objects(&mut catalog, dest, &bad_objects)?;
        }
    }
    report
        .problems
        .sort_by(|a, b| (a.what, &a.name).cmp(&(b.what, &b.name)));
    Ok(report)
}

/// The envs of `asked` (`--env`; none: every env) that a destination holding
/// `held` (none: every env) holds, as [`Context::env_param`] gives them.
fn within(asked: &[String], held: Option<Vec<String>>) -> Option<String> {
    let envs: Vec<String> = match held {
        None if asked.is_empty() => return None,
        None => asked.to_vec(),
        Some(held) if asked.is_empty() => held,
        Some(held) => held.into_iter().filter(|e| asked.contains(e)).collect(),
    };
    Some(serde_json::Value::from(envs).to_string())
}

/// A blob missing or bad in `blobs/`: its refs pending again, its record
/// gone (committed first), then its file removed, so that the next `fetch`
/// downloads it again. Returns the refs put back to pending.
fn forget_blobs(catalog: &mut Catalog, store: &BlobStore, shas: &[String]) -> Result<u64> {
    let tx = catalog.conn_mut().transaction()?;
    let mut refs = 0;
    for sha in shas {
        refs += crate::catalog::verify::forget_blob(&tx, sha)?;
    }
    tx.commit()?;
    for sha in shas {
        let path = store.path(sha);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Harmless: the next fetch puts the right bytes in its place.
            Err(e) => tracing::warn!("cannot remove the bad blob {}: {e}", path.display()),
        }
    }
    Ok(refs)
}

/// Objects found missing or bad at destination `dest` (key, missing,
/// problem), marked ([`crate::catalog::verify::mark_object`]). Returns how
/// many the next `push` uploads again.
fn mark_objects(catalog: &mut Catalog, dest: i64, bad: &[(String, bool, String)]) -> Result<u64> {
    let tx = catalog.conn_mut().transaction()?;
    let mut marked = 0;
    for (key, missing, problem) in bad {
        marked += u64::from(crate::catalog::verify::mark_object(
            &tx, dest, key, *missing, problem,
        )?);
    }
    tx.commit()?;
    Ok(marked)
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "blobs: {} checked, {} bad",
            self.blobs_checked, self.blobs_bad
        )?;
        if self.to {
            writeln!(
                f,
                "objects: {} checked, {} missing, {} bad",
                self.objects_checked, self.objects_missing, self.objects_bad
            )?;
        }
        super::write_cut(f, &self.problems, self.full, "", |f, p| {
            writeln!(f, "{} {}: {}", p.what, p.name, p.problem)
        })?;
        if self.refs_to_fetch_again > 0 {
            writeln!(
                f,
                "{} refs are pending again: `starchive fetch` downloads their files again",
                self.refs_to_fetch_again
            )?;
        }
        if self.objects_to_push_again > 0 {
            writeln!(
                f,
                "{} objects are marked: the next `starchive push --to` uploads them again",
                self.objects_to_push_again
            )?;
        }
        if self.problems.is_empty() {
            writeln!(f, "all good")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn the_envs_checked_are_those_asked_that_the_destination_holds() {
        let envs = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(within(&[], None), None);
        assert_eq!(within(&envs(&["a"]), None).as_deref(), Some(r#"["a"]"#));
        assert_eq!(within(&[], Some(envs(&["b"]))).as_deref(), Some(r#"["b"]"#));
        assert_eq!(
            within(&envs(&["a", "b"]), Some(envs(&["b", "c"]))).as_deref(),
            Some(r#"["b"]"#)
        );
        assert_eq!(
            within(&envs(&["a"]), Some(envs(&["b"]))).as_deref(),
            Some("[]")
        );
    }
}
