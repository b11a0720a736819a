//! The gallery's HTML, as maud templates: every value is escaped as text
//! or attribute unless wrapped in `PreEscaped` (done only for markup these
//! templates made). Ids, file_ids, keys and reasons come from the bot's
//! database and from servers, and are shown as they are, escaped.

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{Item, Media, Shown, slug};
use crate::catalog::gallery::{BatchRow, Card, EnvRow, SessionRow, UserRow};
use crate::catalog::plan::PlanReport;

/// Pages may load only files: no request ever leaves the machine, even for
/// a URL an animation's data might name.
const CSP: &str = "default-src 'none'; img-src file:; media-src file:; script-src file:; \
                   style-src file: 'unsafe-inline'";

/// The tables of the index.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Users,
    Sessions,
    Batches,
}

impl Table {
    fn header(self) -> Markup {
        let columns: &[&str] = match self {
            Table::Users => &["user", "sessions", "refs"],
            Table::Sessions => &["session", "user", "env", "mode", "created"],
            Table::Batches => &[
                "pack batch",
                "user",
                "env",
                "status",
                "created",
                "stickers",
                "fetched",
                "missing positions",
                "positions held twice",
            ],
        };
        html! { tr { @for c in columns { th { (c) } } } }
    }
}

/// A whole page: `items` grouped into tables and grids, with links to the
/// previous and next page of the same book.
pub(super) fn page(
    title: &str,
    number: u32,
    depth: usize,
    items: &[Item],
    animations: &[String],
    prev: Option<&str>,
    next: Option<&str>,
) -> Markup {
    let root = "../".repeat(depth);
    let nav = html! {
        @if prev.is_some() || next.is_some() {
            nav.pages {
                @if let Some(prev) = prev { a rel="prev" href=(prev) { "← previous page" } }
                span { "page " (number) }
                @if let Some(next) = next { a rel="next" href=(next) { "next page →" } }
            }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(CSP);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) @if number > 1 { " (page " (number) ")" } " · starchive" }
                link rel="stylesheet" href={ (root) "assets/gallery.css" };
            }
            body {
                header.site { a href={ (root) "index.html" } { "starchive gallery" } }
                main {
                    h1 { (title) }
                    (nav)
                    (grouped(items))
                    (nav)
                }
                @if !animations.is_empty() {
                    script src={ (root) "assets/lottie_light.min.js" } {}
                    script src={ (root) "assets/gallery.js" } {}
                    @for sha in animations {
                        script src={ (root) "anim/" (sha.get(..2).unwrap_or("xx")) "/" (sha) ".js" } {}
                    }
                }
            }
        }
    }
}

/// Consecutive rows of one table in one `<table>`, consecutive cards in one grid.
fn grouped(items: &[Item]) -> Markup {
    let mut out = String::new();
    let mut i = 0;
    while i < items.len() {
        match &items[i] {
            Item::Block(html) => {
                out.push_str(&html.0);
                i += 1;
            }
            Item::Row(table, _) => {
                let mut rows = String::new();
                while let Some(Item::Row(t, row)) = items.get(i)
                    && t == table
                {
                    rows.push_str(&row.0);
                    i += 1;
                }
                out.push_str(&html! { table { (table.header()) (PreEscaped(rows)) } }.0);
            }
            Item::Card(_) => {
                let mut cards = String::new();
                while let Some(Item::Card(card)) = items.get(i) {
                    cards.push_str(&card.0);
                    i += 1;
                }
                out.push_str(&html! { div.grid { (PreEscaped(cards)) } }.0);
            }
        }
    }
    PreEscaped(out)
}

fn or_none(value: Option<&str>) -> &str {
    value.unwrap_or("—")
}

/// A ref's card: its file (or a placeholder) and what it is.
pub(super) fn card(card: &Card, shown: &Shown, shared_position: bool) -> Markup {
    let label = match card.pack_index {
        Some(i) if card.class == "sticker" => format!("{} #{i}", card.class),
        _ if !card.slot.is_empty() => format!("{} {}", card.class, card.slot),
        _ => card.class.clone(),
    };
    let classes = format!(
        "card state-{}{}",
        card.state,
        if shared_position { " shared" } else { "" }
    );
    html! {
        figure class=(classes) data-class=(card.class) data-row=(card.row_id) {
            div.media {
                @match &shown.media {
                    Media::Image => {
                        img src=[shown.file.as_deref()] loading="lazy" alt=(label);
                    }
                    Media::Video => {
                        video src=[shown.file.as_deref()] muted loop autoplay playsinline
                              preload="auto" title=(label) {}
                    }
                    Media::Animation(sha) => {
                        div.tgs data-tgs=(sha) role="img" aria-label=(label) {}
                    }
                    Media::Placeholder { state, reason } => {
                        div.placeholder {
                            span.state { (state) }
                            @if !reason.is_empty() { span.reason { (reason) } }
                        }
                    }
                }
            }
            figcaption {
                div.title {
                    (label)
                    @if shared_position { " " span.warn { "position held twice" } }
                }
                dl {
                    dt { "row" } dd { code { (card.row_id) } }
                    dt { "Telegram id" } dd { code { (or_none(card.telegram_file_id.as_deref())) } }
                    @if let Some(key) = &card.storage_key { dt { "storage key" } dd { code { (key) } } }
                    dt { "state" } dd { span class={ "badge " (card.state) } { (card.state) } }
                    @if let Some(reason) = &card.reason { dt { "reason" } dd { (reason) } }
                    @if let (Some(kind), Some(size)) = (&card.kind, card.size) {
                        dt { "file" } dd { (kind) ", " (size) " bytes" }
                    }
                }
                @if let Some(file) = &shown.file { a.file href=(file) { "open the file" } }
            }
        }
    }
}

/// A card for positions of a pack that no sticker holds.
pub(super) fn gap(from: i64, to: i64) -> Markup {
    let text = if from == to {
        format!("position {from}")
    } else {
        format!("positions {from}–{to}")
    };
    html! {
        figure.card.gap {
            div.media { div.placeholder { span.state { "missing" } span.reason { (text) " held by no sticker" } } }
            figcaption { div.title { (text) } }
        }
    }
}

pub(super) fn user_title(user_id: Option<&str>) -> String {
    match user_id {
        Some(id) => format!("User {id}"),
        None => "Rows with no user".into(),
    }
}

fn user_href(root: &str, user_id: Option<&str>) -> String {
    format!("{root}users/{}.html", slug(user_id))
}

fn session_href(root: &str, session: &str, page: Option<&str>) -> Option<String> {
    page.map(|page| format!("{root}{page}#s-{}", slug(Some(session))))
}

pub(super) fn user_head(user: &UserRow) -> Markup {
    html! {
        dl.facts {
            dt { "sessions" } dd { (user.sessions) }
            dt { "refs" } dd { (user.refs) }
        }
    }
}

pub(super) fn session_head(session: &SessionRow) -> Markup {
    html! {
        h2 id={ "s-" (slug(Some(&session.id))) } { "Session " (session.id) }
        dl.facts {
            dt { "env" } dd { (or_none(session.env.as_deref())) }
            dt { "mode" } dd { (or_none(session.mode.as_deref())) }
            dt { "created" } dd { (or_none(session.created_at.as_deref())) }
        }
    }
}

pub(super) fn sessionless_head() -> Markup {
    html! { h2 { "Without a session in this archive" } }
}

/// Links from a user's page to pack pages.
pub(super) fn pack_links(batches: &[BatchRow]) -> Markup {
    html! {
        ul.packs {
            @for b in batches {
                li {
                    a href={ "../packs/" (slug(Some(&b.id))) ".html" } { "Pack batch " (b.id) }
                    ": " (b.stickers) " stickers, " (b.fetched) " fetched"
                    @if b.missing_positions > 0 { ", " (b.missing_positions) " positions missing" }
                    @if b.duplicate_positions > 0 { ", " (b.duplicate_positions) " positions held twice" }
                }
            }
        }
    }
}

pub(super) fn pack_title(batch: &BatchRow) -> String {
    format!("Pack batch {}", batch.id)
}

pub(super) fn pack_head(batch: &BatchRow) -> Markup {
    html! {
        dl.facts {
            dt { "user" } dd {
                a href=(user_href("../", batch.user_id.as_deref())) { (or_none(batch.user_id.as_deref())) }
            }
            dt { "session" } dd {
                @if let Some(href) = batch.session_id.as_deref()
                    .and_then(|s| session_href("../", s, batch.session_page.as_deref())) {
                    a href=(href) { (or_none(batch.session_id.as_deref())) }
                } @else {
                    (or_none(batch.session_id.as_deref()))
                }
            }
            dt { "env" } dd { (or_none(batch.env.as_deref())) }
            dt { "status" } dd { (or_none(batch.status.as_deref())) }
            dt { "created" } dd { (or_none(batch.created_at.as_deref())) }
            dt { "stickers" } dd { (batch.stickers) ", " (batch.fetched) " fetched" }
            dt { "missing positions" } dd { (batch.missing_positions) }
            dt { "positions held twice" } dd { (batch.duplicate_positions) }
        }
        @if !batch.known {
            p { "No pack_batches row has this id: its stickers name it." }
        }
        h2 { "Stickers" }
    }
}

pub(super) fn sheet_head() -> Markup {
    html! { h2 { "Sheet" } }
}

pub(super) fn no_sheet() -> Markup {
    html! { h2 { "Sheet" } p { "This batch has no sheet." } }
}

pub(super) fn heading(text: &str, id: &str) -> Markup {
    html! { h2 id=(id) { (text) } }
}

/// `plan`'s counts.
pub(super) fn counts(plan: &PlanReport) -> Markup {
    let rows = plan
        .classes
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("total", &plan.total)]);
    html! {
        h2 { "Counts" }
        table {
            tr {
                th { "class" } th.n { "refs" } th.n { "with storage key" } th.n { "Telegram only" }
                th.n { "fetched" } th.n { "pending" } th.n { "failed" }
            }
            @for (name, c) in rows {
                tr {
                    td { (name) } td.n { (c.refs) } td.n { (c.with_storage_key) }
                    td.n { (c.telegram_only) } td.n { (c.fetched) } td.n { (c.pending) }
                    td.n { (c.failed) }
                }
            }
        }
        dl.facts {
            dt { "unique blobs" } dd { (plan.blobs.count) ", " (plan.blobs.bytes) " bytes" }
            dt { "sessions with no last sticker storage path" }
            dd { (plan.backfill.sessions_missing_storage_path) }
            dt { "stickers with no storage path" } dd { (plan.backfill.stickers_missing_storage_path) }
        }
    }
}

pub(super) fn envs(envs: &[EnvRow]) -> Markup {
    html! {
        h2 { "Envs" }
        table {
            tr {
                th { "env" } th.n { "users" } th.n { "sessions" } th.n { "pack batches" }
                th.n { "refs" } th.n { "fetched" }
            }
            @for e in envs {
                tr {
                    td {
                        @match (&e.env, e.session_known) {
                            (Some(env), _) => (env),
                            (None, true) => "(no env)",
                            (None, false) => "(session unknown)",
                        }
                    }
                    td.n { (e.users) } td.n { (e.sessions) } td.n { (e.pack_batches) }
                    td.n { (e.refs) } td.n { (e.fetched) }
                }
            }
        }
        p { "Users, sessions and pack batches follow; long lists continue on the next pages." }
    }
}

pub(super) fn user_row(user: &UserRow) -> Markup {
    html! {
        tr {
            td { a href=(user_href("", user.user_id.as_deref())) { (user_title(user.user_id.as_deref())) } }
            td.n { (user.sessions) } td.n { (user.refs) }
        }
    }
}

pub(super) fn session_row(session: &SessionRow) -> Markup {
    html! {
        tr {
            td {
                @if let Some(href) = session_href("", &session.id, session.page.as_deref()) {
                    a href=(href) { (session.id) }
                } @else {
                    (session.id)
                }
            }
            td { a href=(user_href("", session.user_id.as_deref())) { (or_none(session.user_id.as_deref())) } }
            td { (or_none(session.env.as_deref())) }
            td { (or_none(session.mode.as_deref())) }
            td { (or_none(session.created_at.as_deref())) }
        }
    }
}

pub(super) fn batch_row(batch: &BatchRow) -> Markup {
    html! {
        tr {
            td { a href={ "packs/" (slug(Some(&batch.id))) ".html" } { (batch.id) } }
            td { a href=(user_href("", batch.user_id.as_deref())) { (or_none(batch.user_id.as_deref())) } }
            td { (or_none(batch.env.as_deref())) }
            td { (or_none(batch.status.as_deref())) }
            td { (or_none(batch.created_at.as_deref())) }
            td.n { (batch.stickers) } td.n { (batch.fetched) }
            td.n { (batch.missing_positions) } td.n { (batch.duplicate_positions) }
        }
    }
}
