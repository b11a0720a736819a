//! `gallery`: writes a static site of the archive (see [`crate::gallery`]).

use std::path::Path;

use super::Context;
use crate::catalog::Catalog;
use crate::catalog::gallery::Scope;
use crate::error::Result;
use crate::gallery::GalleryReport;

/// Writes the gallery of the archive's refs (of `--env`) to `out`, or to
/// `ARCHIVE/gallery`. Reads only the catalog (without its lock, like
/// `plan`: a fetch may go on meanwhile) and `blobs/`.
pub fn gallery(ctx: &Context, out: Option<&Path>) -> Result<GalleryReport> {
    let catalog = Catalog::open_read_only(&ctx.archive)?;
    ctx.warn_unknown_envs(&catalog)?;
    ctx.latest_snapshot(&catalog)?;
    let envs = ctx.env_param();
    // One read transaction: every page sees the same catalog. The TEMP
    // tables it fills are dropped with it.
    let tx = catalog.conn().unchecked_transaction()?;
    let counts = crate::catalog::plan::counts(&tx, &envs)?;
    let scope = Scope::prepare(&tx, &envs)?;
    let out = crate::gallery::out_dir(&ctx.archive, out);
    crate::gallery::write(&scope, &ctx.archive, &out, &counts)
}
