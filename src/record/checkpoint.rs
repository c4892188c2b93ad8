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

/// 2: the ids' hashes are keyed (the key is kept in `index.key`); 1: they were SHA-256, and
/// are read as such.
const FORMAT: u32 = 2;

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
/// its hash and which of those versions served it (the top bit set: the hash is one of the
/// first format, still findable until it ages out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IndexSnapshot {
    pub served: Vec<(String, u32, Option<String>)>,
    pub entries: Vec<(u64, u32)>,
    /// The key of the ids' hashes; none in the first format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<[u64; 2]>,
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
    let mut checkpoint: Checkpoint = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let legacy = match checkpoint.format {
        1 => true,
        FORMAT if checkpoint.index.key.is_none() => {
            return Err("the feedback index has no key".to_owned());
        }
        FORMAT => false,
        other => return Err(format!("unknown format {other}")),
    };
    if checkpoint.events != events {
        return Ok(None);
    }
    let served = checkpoint.index.served.len();
    let entry = |slot: u32| {
        if legacy {
            slot
        } else {
            super::index::served_of(slot)
        }
    };
    if let Some((_, slot)) = checkpoint
        .index
        .entries
        .iter()
        .find(|(_, slot)| entry(*slot) as usize >= served)
    {
        return Err(format!(
            "the feedback index refers to entry {} of {served}",
            entry(*slot)
        ));
    }
    if legacy {
        // The first format's hashes were SHA-256 ones: marked so, they stay findable.
        super::index::mark_legacy(&mut checkpoint.index.entries);
        checkpoint.index.key = None;
        checkpoint.format = FORMAT;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(format: u32, index: &str) -> String {
        format!(
            r#"{{"format":{format},"events":"/state/events.jsonl","position":{{"segment":1,"offset":10,"inode":7}},"stats":{{"variants":[]}},"index":{index}}}"#
        )
    }

    #[test]
    fn a_first_format_checkpoint_is_read_with_its_hashes_marked() {
        let events = Path::new("/state/events.jsonl");
        let index = r#"{"served":[["support",1,null]],"entries":[[12345,0]]}"#;
        let saved = parse(text(1, index).as_bytes(), events).unwrap().unwrap();
        assert_eq!(saved.index.key, None);
        assert_eq!(saved.index.entries.len(), 1);
        assert_ne!(saved.index.entries[0].1, 0, "marked as a first-format hash");
        assert_eq!(super::super::index::served_of(saved.index.entries[0].1), 0);
        // Out of range stays refused, in either format.
        let bad = r#"{"served":[["support",1,null]],"entries":[[12345,1]]}"#;
        assert!(parse(text(1, bad).as_bytes(), events).is_err());
        let bad = r#"{"served":[],"entries":[[12345,2147483648]],"key":[1,2]}"#;
        assert!(parse(text(2, bad).as_bytes(), events).is_err());
        // The second format needs its key.
        assert!(parse(text(2, index).as_bytes(), events).is_err());
        assert!(parse(text(3, index).as_bytes(), events).is_err());
    }

    #[test]
    fn a_checkpoint_reads_back_as_written() {
        let events = Path::new("/state/events.jsonl");
        let index = IndexSnapshot {
            served: vec![("support".into(), 2, Some("e".into()))],
            entries: vec![(1, 0), (u64::MAX, 0)],
            key: Some([3, u64::MAX]),
        };
        let position = Position {
            segment: 1,
            offset: 10,
            inode: 7,
        };
        let saved = Checkpoint::new(
            events,
            position,
            super::super::stats::Stats::default().snapshot(),
            index,
        );
        let text = serde_json::to_string(&saved).unwrap();
        let read = parse(text.as_bytes(), events).unwrap().unwrap();
        assert_eq!(read.index.entries, saved.index.entries);
        assert_eq!(read.index.key, saved.index.key);
        assert_eq!(read.position, position);
    }
}
