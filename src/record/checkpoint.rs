//! The statistics checkpoint: the experiment statistics and the feedback index as of a place
//! in the events history, written to the state folder every so many events and at shutdown.
//! A restart loads it and replays only the events after that place, so restart time and
//! memory do not grow with history — while the events file itself is rotated by size.
//!
//! Written by the events writer's thread once every event before it is in the file (the
//! checkpoint is queued behind them), atomically (a temp file renamed), so a crash leaves the
//! previous checkpoint or the new one, never a part.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::events::{Position, rotated_segments};
use super::stats::StatsSnapshot;

/// The checkpoint's file name in the state folder.
pub const FILE: &str = "stats-checkpoint.json";

/// Events between two checkpoints: a restart replays at most about this many.
pub const EVERY: u64 = 50_000;

const FORMAT: u32 = 1;

/// What the checkpoint holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    format: u32,
    /// The events file it belongs to; a checkpoint of another file is ignored.
    pub events: PathBuf,
    pub position: Position,
    pub stats: StatsSnapshot,
    pub index: IndexSnapshot,
}

/// The feedback index, oldest entry first: the distinct versions served, and per request id
/// its hash and which of those versions served it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexSnapshot {
    pub served: Vec<(String, u32, Option<String>)>,
    pub entries: Vec<(u64, u32)>,
}

impl Checkpoint {
    pub fn new(
        events: &Path,
        position: Position,
        stats: StatsSnapshot,
        index: IndexSnapshot,
    ) -> Self {
        Checkpoint {
            format: FORMAT,
            events: events.to_owned(),
            position,
            stats,
            index,
        }
    }
}

/// Writes the checkpoint atomically.
pub fn save(state_dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let text = serde_json::to_string(checkpoint).map_err(std::io::Error::other)?;
    crate::admin::write::write_atomic(&state_dir.join(FILE), &text)
}

/// Reads the checkpoint of `events` from the state folder: `None` when there is none, or it
/// is unreadable or of another events file (then history is replayed whole).
pub fn load(state_dir: &Path, events: &Path) -> Option<Checkpoint> {
    let path = state_dir.join(FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(file = %path.display(), "cannot read the statistics checkpoint ({e}); replaying the events history");
            return None;
        }
    };
    parse(&bytes, events).unwrap_or_else(|why| {
        tracing::warn!(file = %path.display(), "ignoring the statistics checkpoint: {why}; replaying the events history");
        None
    })
}

/// Parses a checkpoint's bytes (the fuzzer's entry point too).
pub fn parse(bytes: &[u8], events: &Path) -> Result<Option<Checkpoint>, String> {
    let checkpoint: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if checkpoint.format != FORMAT {
        return Err(format!("unknown format {}", checkpoint.format));
    }
    if checkpoint.events != events {
        return Ok(None);
    }
    let served = checkpoint.index.served.len();
    if let Some((_, slot)) = checkpoint
        .index
        .entries
        .iter()
        .find(|(_, slot)| *slot as usize >= served)
    {
        return Err(format!(
            "the feedback index refers to entry {slot} of {served}"
        ));
    }
    Ok(Some(checkpoint))
}

/// Which files to replay after `position` (all of history without one), each from an
/// offset, oldest first; and the number the live file gets when it is rotated.
pub fn plan(events: &Path, position: Option<&Position>) -> (u64, Vec<(PathBuf, u64)>) {
    let segments = rotated_segments(events);
    let live = segments
        .last()
        .map_or(1, |(n, _)| n + 1)
        .max(position.map_or(1, |p| p.segment));
    let inode = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.ino(), m.len()))
    };
    // From the checkpoint's offset if the file is the one it saw, else whole.
    let from = |n: u64, path: &Path| -> Option<u64> {
        let Some(p) = position else {
            return Some(0);
        };
        if n < p.segment {
            return None;
        }
        if n > p.segment {
            return Some(0);
        }
        match inode(path) {
            Some((ino, len)) if ino == p.inode && len >= p.offset => Some(p.offset),
            _ => Some(0),
        }
    };
    let mut files: Vec<(PathBuf, u64)> = segments
        .iter()
        .filter_map(|(n, path)| from(*n, path).map(|offset| (path.clone(), offset)))
        .collect();
    if let Some(offset) = from(live, events) {
        files.push((events.to_owned(), offset));
    }
    (live, files)
}
