//! Step 2 of the request path: choose the version that serves a request.
//!
//! In order: a pinned version (a number or a label), then the prompt's experiment or rollout,
//! then the active version.

use md5::{Digest, Md5};
use serde::Serialize;

use crate::prompts::{Experiment, Prompt, PromptSet, Split, Version};

/// How a request asked for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    Number(u32),
    Label(String),
}

impl VersionRef {
    /// `"3"` is version 3; anything else is a label.
    pub fn parse(text: &str) -> Self {
        match text.parse::<u32>() {
            Ok(n) => VersionRef::Number(n),
            Err(_) => VersionRef::Label(text.to_owned()),
        }
    }
}

/// Why a version was chosen; sent back as `x-prompt-selection`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    Active,
    Experiment,
    Pinned,
    Label,
}

impl Selection {
    pub fn as_str(self) -> &'static str {
        match self {
            Selection::Active => "active",
            Selection::Experiment => "experiment",
            Selection::Pinned => "pinned",
            Selection::Label => "label",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("unknown prompt `{name}`; known prompts: {known}")]
    UnknownPrompt { name: String, known: String },
    #[error("prompt `{name}` is not served: {reason}")]
    Unavailable { name: String, reason: String },
    #[error("prompt `{prompt}` has no version {version}; versions: {known}")]
    UnknownVersion {
        prompt: String,
        version: u32,
        known: String,
    },
    #[error("unknown label `{label}` for prompt `{prompt}`; known labels: {known}")]
    UnknownLabel {
        prompt: String,
        label: String,
        known: String,
    },
}

/// Finds a prompt by name.
pub fn find<'a>(set: &'a PromptSet, name: &str) -> Result<&'a Prompt, SelectError> {
    if let Some(reason) = set.unavailable(name) {
        return Err(SelectError::Unavailable {
            name: name.to_owned(),
            reason: reason.to_owned(),
        });
    }
    set.get(name)
        .map(AsRef::as_ref)
        .ok_or_else(|| SelectError::UnknownPrompt {
            name: name.to_owned(),
            known: closest_names(set, name),
        })
}

/// At most five known prompt names, the closest to `name`, for a "did you mean" list that
/// stays short however many prompts there are (and does not list every prompt to any caller).
fn closest_names(set: &PromptSet, name: &str) -> String {
    const SHOWN: usize = 5;
    let mut ranked: Vec<(f64, &str)> = set
        .prompts()
        .map(|p| (strsim::jaro_winkler(name, &p.name), p.name.as_str()))
        .collect();
    if ranked.is_empty() {
        return "none".to_owned();
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
    // The closest five, shown in name order so the list reads like the rest of the API.
    let mut closest: Vec<&str> = ranked.iter().take(SHOWN).map(|(_, n)| *n).collect();
    closest.sort_unstable();
    let mut names: Vec<String> = closest.iter().map(|n| format!("`{n}`")).collect();
    if ranked.len() > SHOWN {
        names.push(format!("… ({} in all)", ranked.len()));
    }
    names.join(", ")
}

/// Chooses the version of `prompt` for a request. `key` is the assignment key (the user).
pub fn choose<'a>(
    prompt: &'a Prompt,
    requested: Option<&VersionRef>,
    key: Option<&str>,
) -> Result<(&'a Version, Selection), SelectError> {
    let (number, selection) = match requested {
        Some(VersionRef::Number(n)) => (*n, Selection::Pinned),
        Some(VersionRef::Label(label)) => {
            let Some(&n) = prompt.labels.get(label) else {
                let known: Vec<String> = prompt.labels.keys().map(|l| format!("`{l}`")).collect();
                return Err(SelectError::UnknownLabel {
                    prompt: prompt.name.clone(),
                    label: label.clone(),
                    known: if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    },
                });
            };
            (n, Selection::Label)
        }
        None => match (&prompt.experiment, &prompt.rollout_live) {
            (Some(experiment), _) => (assign(&prompt.name, experiment, key), Selection::Experiment),
            // A rollout's arms are recorded like an experiment's, under the rollout's id.
            (None, Some(live)) => (roll(&prompt.name, live, key), Selection::Experiment),
            (None, None) => (prompt.active, Selection::Active),
        },
    };
    let version = prompt
        .versions
        .get(&number)
        .ok_or_else(|| SelectError::UnknownVersion {
            prompt: prompt.name.clone(),
            version: number,
            known: prompt
                .versions
                .keys()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    Ok((version, selection))
}

/// The seed's bucket: `int(md5(f"{name}:{user}").hexdigest(), 16) % 100`, with the salt
/// between name and user when set. md5 because every replica and the seed's Python must agree
/// bit for bit; it is a spreading function here, not a security one.
pub fn bucket(name: &str, salt: Option<&str>, user: &str) -> u32 {
    let mut hasher = Md5::new();
    hasher.update(name.as_bytes());
    hasher.update(b":");
    if let Some(salt) = salt {
        hasher.update(salt.as_bytes());
        hasher.update(b":");
    }
    hasher.update(user.as_bytes());
    let digest: [u8; 16] = hasher.finalize().into();
    (u128::from_be_bytes(digest) % 100) as u32
}

/// Assigns a version from an experiment: by the user's bucket when there is a key, at random
/// in proportion to the split otherwise.
pub fn assign(name: &str, experiment: &Experiment, key: Option<&str>) -> u32 {
    match &experiment.split {
        Split::AB {
            version_a,
            version_b,
            traffic_split,
        } => {
            let in_b = match key {
                // Same comparison as the seed: an integer bucket against a float threshold.
                Some(user) => {
                    f64::from(bucket(name, experiment.salt.as_deref(), user))
                        < traffic_split * 100.0
                }
                None => fastrand::f64() < *traffic_split,
            };
            if in_b { *version_b } else { *version_a }
        }
        Split::Weighted { variants } => {
            let point = match key {
                Some(user) => bucket(name, experiment.salt.as_deref(), user),
                None => fastrand::u32(0..100),
            };
            let mut cumulative = 0;
            for variant in variants {
                cumulative += variant.weight;
                if cumulative > point {
                    return variant.version;
                }
            }
            // Weights sum to 100 (validated), so this is only reached for an empty list.
            variants.last().map_or(0, |v| v.version)
        }
    }
}

/// Assigns a rollout's version: `to` when the user's bucket (the seed's md5 bucket) is below
/// the current share. As the share only grows, a user on `to` stays there; after a halt the
/// share is 0 and everyone is on `from`. One atomic load: no lock, no allocation.
pub fn roll(name: &str, live: &crate::rollout::Live, key: Option<&str>) -> u32 {
    if live.plan.halted {
        return live.plan.from;
    }
    let share = live.share();
    let on_b = match key {
        Some(user) => bucket(name, live.plan.salt.as_deref(), user) < share,
        None => fastrand::u32(0..100) < share,
    };
    if on_b { live.plan.to } else { live.plan.from }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompts::Variant;

    #[test]
    fn rollout_users_move_one_way() {
        let plan = crate::rollout::plan::Rollout {
            from: 1,
            to: 2,
            steps: vec![10, 25, 50, 100],
            min_requests: 1,
            min_duration: "1s".to_owned(),
            min_duration_value: std::time::Duration::from_secs(1),
            guards: Vec::new(),
            salt: None,
            halted: false,
        };
        let live = crate::rollout::Live::new(&plan);
        let users: Vec<String> = (0..2000).map(|i| format!("u{i}")).collect();
        let mut on_b = vec![false; users.len()];
        for share in [0, 10, 25, 50, 100] {
            live.set_share(share);
            for (i, user) in users.iter().enumerate() {
                let got = roll("p", &live, Some(user)) == 2;
                assert!(!on_b[i] || got, "user {user} flipped back at {share}%");
                assert_eq!(got, bucket("p", None, user) < share);
                on_b[i] = got;
            }
            let share_seen = on_b.iter().filter(|b| **b).count() as f64 / users.len() as f64;
            assert!(
                (share_seen - f64::from(share) / 100.0).abs() < 0.04,
                "{share_seen}"
            );
        }
        live.set_share(0);
        assert!(
            users.iter().all(|u| roll("p", &live, Some(u)) == 1),
            "a halt moves everyone to A"
        );
    }

    #[test]
    fn bucket_matches_the_seed_formula() {
        // Python: int(hashlib.md5(b"customer_support:user_123").hexdigest(), 16) % 100
        let digest = Md5::digest(b"customer_support:user_123");
        let expected = (u128::from_be_bytes(digest.into()) % 100) as u32;
        assert_eq!(bucket("customer_support", None, "user_123"), expected);
        let salted = Md5::digest(b"customer_support:2026-11:user_123");
        let expected = (u128::from_be_bytes(salted.into()) % 100) as u32;
        assert_eq!(
            bucket("customer_support", Some("2026-11"), "user_123"),
            expected
        );
    }

    #[test]
    fn known_buckets() {
        // Computed with Python's hashlib, independently of this code.
        assert_eq!(bucket("customer_support", None, "user_123"), 60);
        assert_eq!(bucket("customer_support", None, "alice"), 59);
    }

    #[test]
    fn weighted_walk_uses_cumulative_weights() {
        let exp = Experiment {
            split: Split::Weighted {
                variants: vec![
                    Variant {
                        version: 1,
                        weight: 70,
                    },
                    Variant {
                        version: 2,
                        weight: 20,
                    },
                    Variant {
                        version: 3,
                        weight: 10,
                    },
                ],
            },
            salt: None,
        };
        for user in (0..500).map(|i| format!("u{i}")) {
            let b = bucket("p", None, &user);
            let expected = if b < 70 {
                1
            } else if b < 90 {
                2
            } else {
                3
            };
            assert_eq!(assign("p", &exp, Some(&user)), expected, "user {user}");
        }
    }

    #[test]
    fn version_refs_parse() {
        assert_eq!(VersionRef::parse("3"), VersionRef::Number(3));
        assert_eq!(
            VersionRef::parse("staging"),
            VersionRef::Label("staging".into())
        );
    }
}
