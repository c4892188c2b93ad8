//! Requests and errors per prompt over the last hour, for the console's prompt list.
//!
//! Sixty one-minute buckets per prompt. Memory is bounded by the number of prompts served,
//! not by traffic: only names of served prompts are recorded, and the table is capped.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

const BUCKETS: usize = 60;
/// A safety cap: prompt names come from the validated set, so this is never reached in practice.
const MAX_PROMPTS: usize = 10_000;

#[derive(Clone, Copy, Default)]
struct Bucket {
    minute: u64,
    requests: u64,
    errors: u64,
}

/// Per-prompt rolling counts; cheap to update.
#[derive(Default)]
pub struct Recent {
    prompts: Mutex<hashbrown::HashMap<String, [Bucket; BUCKETS]>>,
}

fn minute_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

impl Recent {
    /// Counts one finished request of `prompt`.
    pub fn add(&self, prompt: &str, error: bool) {
        self.add_at(prompt, error, minute_now());
    }

    fn add_at(&self, prompt: &str, error: bool, minute: u64) {
        let mut prompts = self.prompts.lock().unwrap_or_else(|e| e.into_inner());
        // One lookup in the common case: a prompt already counted.
        let buckets = match prompts.get_mut(prompt) {
            Some(buckets) => buckets,
            None => {
                if prompts.len() >= MAX_PROMPTS {
                    // Forget prompts with nothing in the window before refusing a new one.
                    prompts.retain(|_, b| {
                        b.iter().any(|b| {
                            b.requests > 0 && minute.saturating_sub(b.minute) < BUCKETS as u64
                        })
                    });
                    if prompts.len() >= MAX_PROMPTS {
                        return;
                    }
                }
                prompts
                    .entry(prompt.to_owned())
                    .or_insert([Bucket::default(); BUCKETS])
            }
        };
        let slot = &mut buckets[(minute % BUCKETS as u64) as usize];
        if slot.minute != minute {
            *slot = Bucket {
                minute,
                ..Bucket::default()
            };
        }
        slot.requests += 1;
        if error {
            slot.errors += 1;
        }
    }

    /// `(requests, errors)` of `prompt` in the last 60 minutes.
    pub fn last_hour(&self, prompt: &str) -> (u64, u64) {
        self.last_hour_at(prompt, minute_now())
    }

    fn last_hour_at(&self, prompt: &str, minute: u64) -> (u64, u64) {
        let prompts = self.prompts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(buckets) = prompts.get(prompt) else {
            return (0, 0);
        };
        buckets
            .iter()
            .filter(|b| b.requests > 0 && minute.saturating_sub(b.minute) < BUCKETS as u64)
            .fold((0, 0), |(r, e), b| (r + b.requests, e + b.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_roll_off_after_an_hour() {
        let recent = Recent::default();
        recent.add_at("support", false, 1000);
        recent.add_at("support", true, 1000);
        recent.add_at("support", false, 1030);
        assert_eq!(recent.last_hour_at("support", 1030), (3, 1));
        assert_eq!(recent.last_hour_at("support", 1059), (3, 1));
        assert_eq!(recent.last_hour_at("support", 1060), (1, 0));
        // The bucket of minute 1000 is reused by minute 1060.
        recent.add_at("support", false, 1060);
        assert_eq!(recent.last_hour_at("support", 1060), (2, 0));
        assert_eq!(recent.last_hour_at("other", 1060), (0, 0));
    }
}
