//! The feedback index: request id → the version that served it, so `/v1/feedback` can find
//! it by either id. Filled on every recorded request; kept in the statistics checkpoint.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;

use super::checkpoint;

/// Which version served a request, as feedback needs to find it. Names are shared, not
/// copied: the index holds many entries for few prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedBy {
    pub prompt: Arc<str>,
    pub version: u32,
    pub experiment: Option<Arc<str>>,
}

impl ServedBy {
    fn is(&self, prompt: &str, version: u32, experiment: Option<&str>) -> bool {
        self.version == version
            && *self.prompt == *prompt
            && self.experiment.as_deref() == experiment
    }
}

/// Distinct versions the index tells apart; past this, requests are not indexed.
const MAX_SERVED: usize = 65_536;

/// Set in a slot whose id hash is of the first checkpoint format (SHA-256): entries restored
/// from such a checkpoint stay findable until they age out of the window.
const LEGACY: u32 = 1 << 31;

/// Request id → what served it, bounded: the oldest ids are forgotten first. Compact, since it
/// holds `--feedback-window` entries in memory and in the checkpoint: an id is kept as a 64-bit
/// hash (two ids of a window of 100,000 share one with odds of about 1 in 10^9), what served it
/// as an index into the few distinct versions seen, both in a ring of the window's size, with a
/// hash table of ring positions to find them — about 19 bytes an entry.
pub(super) struct FeedbackIndex {
    hashes: Vec<u64>,
    /// Index into `served`, with the [`LEGACY`] bit.
    slots: Vec<u32>,
    /// The oldest entry, once the ring is full.
    head: usize,
    /// Ring positions, by id hash.
    table: hashbrown::HashTable<u32>,
    /// Entries whose hash is a legacy one.
    legacy: usize,
    /// The secret key of the ids' hashes (SipHash-2-4: keyed, so ids a client chooses cannot
    /// be made to collide with others; stable, so the checkpoint keeps the hashes with it).
    key: [u64; 2],
    served: Vec<ServedBy>,
    /// Positions in `served`, by prompt, version and experiment.
    by_served: hashbrown::HashTable<u32>,
    served_hasher: hashbrown::DefaultHashBuilder,
    /// The slot most recently looked up: most requests are served by the same few versions.
    last: Option<u32>,
    capacity: usize,
}

/// A hash of the first checkpoint format, 8 bytes of a SHA-256.
fn legacy_hash(id: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

impl FeedbackIndex {
    pub(super) fn new(capacity: usize) -> Self {
        let (k0, k1) = uuid::Uuid::new_v4().as_u64_pair();
        FeedbackIndex {
            hashes: Vec::new(),
            slots: Vec::new(),
            head: 0,
            table: hashbrown::HashTable::new(),
            legacy: 0,
            key: [k0, k1],
            served: Vec::new(),
            by_served: hashbrown::HashTable::new(),
            served_hasher: hashbrown::DefaultHashBuilder::default(),
            last: None,
            capacity,
        }
    }

    /// The index's hash of a request id.
    fn id_hash(&self, id: &str) -> u64 {
        #[expect(
            deprecated,
            reason = "std's SipHash-2-4 with a key: the algorithm is fixed, so checkpointed hashes stay valid"
        )]
        let mut hasher = std::hash::SipHasher::new_with_keys(self.key[0], self.key[1]);
        hasher.write(id.as_bytes());
        hasher.finish()
    }

    fn slot(&mut self, prompt: &str, version: u32, experiment: Option<&str>) -> Option<u32> {
        if let Some(last) = self.last
            && self.served[last as usize].is(prompt, version, experiment)
        {
            return Some(last);
        }
        let hash = self.served_hasher.hash_one((prompt, version, experiment));
        let served = &self.served;
        if let Some(&slot) = self.by_served.find(hash, |&s| {
            served[s as usize].is(prompt, version, experiment)
        }) {
            self.last = Some(slot);
            return Some(slot);
        }
        if self.served.len() >= MAX_SERVED {
            return None;
        }
        let slot = u32::try_from(self.served.len()).ok()?;
        self.served.push(ServedBy {
            prompt: Arc::from(prompt),
            version,
            experiment: experiment.map(Arc::from),
        });
        let (served, hasher) = (&self.served, &self.served_hasher);
        self.by_served.insert_unique(hash, slot, |&s| {
            let s = &served[s as usize];
            hasher.hash_one((&*s.prompt, s.version, s.experiment.as_deref()))
        });
        self.last = Some(slot);
        Some(slot)
    }

    pub(super) fn insert(
        &mut self,
        id: &str,
        prompt: &str,
        version: u32,
        experiment: Option<&str>,
    ) {
        if self.capacity == 0 {
            return;
        }
        let Some(slot) = self.slot(prompt, version, experiment) else {
            return;
        };
        self.insert_hashed(self.id_hash(id), slot);
    }

    /// The ring position of a hash of either kind (`legacy` or keyed).
    fn position(&self, hash: u64, legacy: bool) -> Option<usize> {
        let (hashes, slots) = (&self.hashes, &self.slots);
        self.table
            .find(hash, |&p| {
                hashes[p as usize] == hash && (slots[p as usize] & LEGACY != 0) == legacy
            })
            .map(|&p| p as usize)
    }

    /// Adds an entry; `slot` carries the [`LEGACY`] bit for a hash of the first format.
    fn insert_hashed(&mut self, hash: u64, slot: u32) {
        if self.capacity == 0 {
            // `--feedback-window 0`: nothing is kept, and a checkpoint restores nothing.
            return;
        }
        let legacy = slot & LEGACY != 0;
        if let Some(p) = self.position(hash, legacy) {
            self.slots[p] = slot;
            return;
        }
        let position = if self.hashes.len() < self.capacity {
            self.hashes.push(hash);
            self.slots.push(slot);
            if self.hashes.len() == self.capacity {
                // Full for good: no room to spare from the growth by doubling.
                self.hashes.shrink_to_fit();
                self.slots.shrink_to_fit();
            }
            self.hashes.len() - 1
        } else {
            // Forget the oldest, then reuse its place.
            let oldest = self.head;
            let old_hash = self.hashes[oldest];
            if let Ok(entry) = self.table.find_entry(old_hash, |&p| p as usize == oldest) {
                entry.remove();
            }
            if self.slots[oldest] & LEGACY != 0 {
                self.legacy -= 1;
            }
            self.hashes[oldest] = hash;
            self.slots[oldest] = slot;
            self.head = (oldest + 1) % self.capacity;
            oldest
        };
        if legacy {
            self.legacy += 1;
        }
        let hashes = &self.hashes;
        self.table
            .insert_unique(hash, position as u32, |&p| hashes[p as usize]);
    }

    /// Entries oldest first.
    fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        let n = self.hashes.len();
        (0..n).map(move |i| {
            let p = (self.head + i) % n;
            (self.hashes[p], self.slots[p])
        })
    }

    pub(super) fn get(&self, id: &str) -> Option<&ServedBy> {
        let p = self.position(self.id_hash(id), false).or_else(|| {
            // Feedback is rare: only then is an id hashed the old way too.
            (self.legacy > 0)
                .then(|| self.position(legacy_hash(id), true))
                .flatten()
        })?;
        self.served.get((self.slots[p] & !LEGACY) as usize)
    }

    pub(super) fn snapshot(&self) -> checkpoint::IndexSnapshot {
        checkpoint::IndexSnapshot {
            served: self
                .served
                .iter()
                .map(|s| {
                    (
                        s.prompt.to_string(),
                        s.version,
                        s.experiment.as_deref().map(str::to_owned),
                    )
                })
                .collect(),
            entries: self.entries().collect(),
            key: Some(self.key),
        }
    }

    /// Restores a checkpoint's entries into an index that holds none yet (at start), which
    /// takes the checkpoint's key. Into one that already does, under another key, only the
    /// legacy entries could be found again: the others are left out.
    pub(super) fn restore(&mut self, snapshot: checkpoint::IndexSnapshot) {
        let keyed = match snapshot.key {
            Some(key) if self.hashes.is_empty() => {
                self.key = key;
                true
            }
            Some(key) => key == self.key,
            None => false,
        };
        let slots: Vec<Option<u32>> = snapshot
            .served
            .iter()
            .map(|(prompt, version, experiment)| self.slot(prompt, *version, experiment.as_deref()))
            .collect();
        let keep = snapshot.entries.len().min(self.capacity);
        self.hashes.reserve_exact(keep);
        self.slots.reserve_exact(keep);
        let (table, hashes) = (&mut self.table, &self.hashes);
        table.reserve(keep, |&p| hashes[p as usize]);
        for (hash, slot) in snapshot.entries {
            let legacy = slot & LEGACY;
            if legacy == 0 && !keyed {
                continue;
            }
            if let Some(Some(slot)) = slots.get((slot & !LEGACY) as usize) {
                self.insert_hashed(hash, *slot | legacy);
            }
        }
    }
}

/// Marks the entries of a first-format checkpoint, whose hashes are all SHA-256 ones.
pub(super) fn mark_legacy(entries: &mut [(u64, u32)]) {
    for (_, slot) in entries {
        *slot |= LEGACY;
    }
}

/// The version an entry's slot names, without the legacy bit.
pub(super) fn served_of(slot: u32) -> u32 {
    slot & !LEGACY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_restores_into_a_window_of_zero_without_keeping_anything() {
        let mut index = FeedbackIndex::new(4);
        index.insert("a", "support", 1, None);
        index.insert("b", "support", 2, None);
        let mut none = FeedbackIndex::new(0);
        none.restore(index.snapshot());
        assert!(none.get("a").is_none());
        none.insert("c", "support", 1, None);
        assert!(none.get("c").is_none());
    }

    #[test]
    fn a_checkpoint_restored_beside_entries_keeps_them_findable() {
        let mut saved = FeedbackIndex::new(64);
        for i in 0..40 {
            saved.insert(&format!("old-{i}"), "support", 1, None);
        }
        let mut index = FeedbackIndex::new(64);
        for i in 0..5 {
            index.insert(&format!("new-{i}"), "support", 2, None);
        }
        index.restore(saved.snapshot());
        for i in 0..5 {
            assert_eq!(
                index.get(&format!("new-{i}")).unwrap().version,
                2,
                "new-{i}"
            );
        }
    }

    #[test]
    fn the_feedback_index_forgets_the_oldest_ids() {
        let mut index = FeedbackIndex::new(2);
        index.insert("a", "support", 1, None);
        index.insert("b", "support", 2, Some("exp1"));
        index.insert("c", "support", 1, None);
        assert!(index.get("a").is_none());
        assert_eq!(index.get("b").unwrap().experiment.as_deref(), Some("exp1"));
        assert_eq!(index.get("c").unwrap().version, 1);
        assert_eq!(index.served.len(), 2, "versions are shared, not copied");
        assert_eq!(index.hashes.len(), 2);
        for i in 0..1000 {
            index.insert(&format!("x{i}"), "support", 1, None);
        }
        assert!(index.get("x998").is_some() && index.get("x999").is_some());
        assert!(index.get("x997").is_none() && index.get("c").is_none());
        assert_eq!(index.table.len(), 2);
        index.insert("b", "support", 2, Some("exp1"));
        index.insert("c", "support", 1, None);

        let mut restored = FeedbackIndex::new(2);
        restored.restore(index.snapshot());
        assert_eq!(restored.get("b"), index.get("b"));
        assert_eq!(restored.get("c"), index.get("c"));
        assert!(restored.get("a").is_none());
        // A smaller window after a restart keeps the newest.
        let mut smaller = FeedbackIndex::new(1);
        smaller.restore(index.snapshot());
        assert!(smaller.get("b").is_none() && smaller.get("c").is_some());
    }

    #[test]
    fn versions_are_told_apart_by_prompt_version_and_experiment() {
        let mut index = FeedbackIndex::new(10);
        index.insert("a", "support", 1, None);
        index.insert("b", "support", 1, Some("e"));
        index.insert("c", "support", 2, None);
        index.insert("d", "sales", 1, None);
        index.insert("e", "support", 1, None);
        assert_eq!(index.served.len(), 4);
        let of = |id| {
            let s = index.get(id).unwrap();
            (
                s.prompt.to_string(),
                s.version,
                s.experiment.as_deref().map(str::to_owned),
            )
        };
        assert_eq!(of("a"), ("support".into(), 1, None));
        assert_eq!(of("b"), ("support".into(), 1, Some("e".into())));
        assert_eq!(of("c"), ("support".into(), 2, None));
        assert_eq!(of("d"), ("sales".into(), 1, None));
        assert_eq!(of("e"), of("a"));
    }

    #[test]
    fn ids_of_a_first_format_checkpoint_are_still_found_until_they_age_out() {
        // As the first format wrote them: SHA-256 hashes, no key.
        let mut entries = vec![(legacy_hash("old-1"), 0), (legacy_hash("old-2"), 1)];
        mark_legacy(&mut entries);
        let snapshot = checkpoint::IndexSnapshot {
            served: vec![
                ("support".into(), 1, None),
                ("support".into(), 2, Some("e".into())),
            ],
            entries,
            key: None,
        };
        let mut index = FeedbackIndex::new(3);
        index.restore(snapshot);
        assert_eq!(index.get("old-1").unwrap().version, 1);
        assert_eq!(index.get("old-2").unwrap().experiment.as_deref(), Some("e"));
        index.insert("new", "support", 2, None);
        assert_eq!(index.get("new").unwrap().version, 2);
        // Saved in the new format and restored, both kinds are found.
        let mut again = FeedbackIndex::new(3);
        again.restore(index.snapshot());
        assert_eq!(again.get("old-1").unwrap().version, 1);
        assert_eq!(again.get("new").unwrap().version, 2);
        // The legacy ones age out like any other.
        again.insert("newer", "support", 1, None);
        again.insert("newest", "support", 1, None);
        assert!(again.get("old-1").is_none() && again.get("old-2").is_none());
        assert_eq!(again.legacy, 0);
        assert!(again.get("new").is_some());
    }
}
