//! Why none of the keys the rows name is in the bucket: shared by `check
//! --storage` (which lists the whole bucket) and `fetch --storage` (which
//! reads keys one by one and lists only a sample when every one was missing).

use std::collections::HashSet;

use super::Store;
use crate::error::Result;

/// Listed objects [`prefix_hint`] looks at for keys the rows name.
pub const HINT_SAMPLE: usize = 100;

/// The hint when none of the `named` keys the rows name is in `store`: a
/// wrong bucket or prefix, most often. `sample` holds the first listed keys
/// (relative to the store's prefix, at most [`HINT_SAMPLE`]; `None`: the
/// bucket could not be listed) and `objects` how many it lists, when known.
/// When a sampled object's key ends with a key the rows name (`named_among`
/// says which of the candidates are), the hint names the *other* prefix they
/// sit under. `None` when a sampled object sits at a key the rows name under
/// the store's own prefix: the prefix is right, the keys missing are just
/// missing (dangling), and a hint would contradict itself.
pub fn prefix_hint(
    store: &Store,
    named: u64,
    objects: Option<u64>,
    sample: Option<&[String]>,
    named_among: impl FnOnce(&[String]) -> Result<HashSet<String>>,
) -> Result<Option<String>> {
    let under = if store.prefix.is_empty() {
        "at its root".to_string()
    } else {
        format!("under the prefix '{}'", store.prefix)
    };
    let Some(sample) = sample else {
        return Ok(Some(format!(
            "none of the {named} keys the rows name is in the bucket {under}: \
             are the bucket and the prefix right?"
        )));
    };
    if sample.is_empty() {
        return Ok(Some(format!(
            "none of the {named} keys the rows name is in the bucket, which lists no object \
             {under}: are the bucket and the prefix right?"
        )));
    }
    // Each sampled key as the bucket holds it, and where each candidate (the
    // key itself, then what follows each '/') starts in it.
    let full: Vec<String> = sample
        .iter()
        .map(|key| {
            if store.prefix.is_empty() {
                key.clone()
            } else {
                format!("{}/{key}", store.prefix)
            }
        })
        .collect();
    let starts = |full: &str| -> Vec<usize> {
        std::iter::once(0)
            .chain(full.match_indices('/').map(|(i, _)| i + 1))
            .collect()
    };
    let candidates: Vec<String> = full
        .iter()
        .flat_map(|f| starts(f).into_iter().map(|s| f[s..].to_string()))
        .collect();
    let named_keys = named_among(&candidates)?;
    if sample.iter().any(|key| named_keys.contains(key)) {
        return Ok(None);
    }
    for f in &full {
        for start in starts(f) {
            let prefix = f[..start].trim_end_matches('/');
            if prefix != store.prefix && named_keys.contains(&f[start..]) {
                let there = if prefix.is_empty() {
                    "at the bucket's root".to_string()
                } else {
                    format!("under the prefix '{prefix}'")
                };
                return Ok(Some(format!(
                    "none of the {named} keys the rows name is in the bucket {under}, but they \
                     seem to be {there} (the object '{f}' is at a key the rows name): \
                     is the prefix right?"
                )));
            }
        }
    }
    let among = match objects {
        Some(n) => format!("among the {n} objects"),
        None => "among the objects".to_string(),
    };
    Ok(Some(format!(
        "none of the {named} keys the rows name is {among} the bucket lists {under}: \
         are the bucket and the prefix right?"
    )))
}
