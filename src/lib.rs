//! starchive: archive the files of a Telegram sticker bot backed by Supabase.
//!
//! The catalog (`catalog.sqlite`) is the only state: every stage reads the work
//! it has left from it and commits results item by item, so any stage can be
//! interrupted at any instant and simply run again.

pub mod blobs;
pub mod blocking;
pub mod bot;
pub mod catalog;
pub mod commands;
pub mod download;
pub mod error;
pub mod gallery;
pub mod layout;
pub mod manifest;
pub mod object_check;
pub mod placement;
pub mod progress;
pub mod redact;
pub mod refs;
pub mod source;
pub mod store_url;
pub mod stores;
pub mod telegram;
pub mod transfer;
pub mod upload;

pub use error::{Error, ExitStatus, Result};
