//! Diffs of two versions, computed on the server with `similar`: the front matter (model and
//! settings, one line each) and the template, as side-by-side rows and as unified hunks.

use serde::Serialize;
use similar::{ChangeTag, DiffOp, TextDiff};

use crate::prompts::Version;

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// One row of the side-by-side view.
#[derive(Debug, Serialize, PartialEq)]
pub struct SplitRow {
    /// `equal`, `delete`, `insert`, `replace` or `gap` (unchanged lines left out).
    pub kind: &'static str,
    pub left_no: Option<usize>,
    pub left: Option<String>,
    pub right_no: Option<usize>,
    pub right: Option<String>,
}

/// One row of the unified view.
#[derive(Debug, Serialize, PartialEq)]
pub struct UnifiedRow {
    /// `equal`, `delete`, `insert` or `hunk` (a `@@` header).
    pub kind: &'static str,
    pub old_no: Option<usize>,
    pub new_no: Option<usize>,
    pub text: String,
}

/// The diff of one text.
#[derive(Debug, Serialize)]
pub struct TextChange {
    pub split: Vec<SplitRow>,
    pub unified: Vec<UnifiedRow>,
    pub added: usize,
    pub removed: usize,
    pub changed: bool,
}

/// The diff of two versions.
#[derive(Debug, Serialize)]
pub struct VersionDiff {
    pub front: TextChange,
    pub template: TextChange,
}

/// The version's model and settings as lines, every key present so the two sides align.
pub fn front_matter(v: &Version) -> String {
    let mut lines = vec![
        format!(
            "model: {}",
            v.model.as_deref().unwrap_or("(from the request)")
        ),
        format!(
            "temperature: {}",
            v.temperature
                .map_or("(from the request)".to_owned(), |t| t.to_string())
        ),
        format!(
            "max_tokens: {}",
            v.max_tokens
                .map_or("(from the request)".to_owned(), |t| t.to_string())
        ),
    ];
    for (key, value) in &v.params {
        lines.push(format!("params.{key}: {value}"));
    }
    lines.push(format!("variables: {}", v.variables.join(", ")));
    lines.join("\n") + "\n"
}

pub fn versions(a: &Version, b: &Version) -> VersionDiff {
    VersionDiff {
        front: text(&front_matter(a), &front_matter(b)),
        template: text(&with_newline(&a.template), &with_newline(&b.template)),
    }
}

fn with_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

fn line(text: &str) -> String {
    text.trim_end_matches(['\n', '\r']).to_owned()
}

/// Diffs two texts line by line.
pub fn text(old: &str, new: &str) -> TextChange {
    let diff = TextDiff::from_lines(old, new);
    let old_lines: Vec<&str> = diff.old_slices().to_vec();
    let new_lines: Vec<&str> = diff.new_slices().to_vec();
    let mut split = Vec::new();
    let mut unified = Vec::new();
    let (mut added, mut removed) = (0, 0);
    for change in diff.iter_all_changes() {
        match change.tag() {
            ChangeTag::Insert => added += 1,
            ChangeTag::Delete => removed += 1,
            ChangeTag::Equal => {}
        }
    }
    let groups = diff.grouped_ops(CONTEXT);
    for (g, group) in groups.iter().enumerate() {
        let (Some(first), Some(last)) = (group.first(), group.last()) else {
            continue;
        };
        let old_start = first.old_range().start;
        let new_start = first.new_range().start;
        let old_len = last.old_range().end - old_start;
        let new_len = last.new_range().end - new_start;
        if g > 0 || old_start > 0 || new_start > 0 {
            split.push(SplitRow {
                kind: "gap",
                left_no: None,
                left: None,
                right_no: None,
                right: None,
            });
        }
        unified.push(UnifiedRow {
            kind: "hunk",
            old_no: None,
            new_no: None,
            text: format!(
                "@@ -{},{old_len} +{},{new_len} @@",
                old_start + 1,
                new_start + 1
            ),
        });
        for op in group {
            let (_, old_range, new_range) = op.as_tag_tuple();
            match *op {
                DiffOp::Equal { .. } => {
                    for (o, n) in old_range.zip(new_range) {
                        split.push(SplitRow {
                            kind: "equal",
                            left_no: Some(o + 1),
                            left: Some(line(old_lines[o])),
                            right_no: Some(n + 1),
                            right: Some(line(new_lines[n])),
                        });
                        unified.push(UnifiedRow {
                            kind: "equal",
                            old_no: Some(o + 1),
                            new_no: Some(n + 1),
                            text: line(old_lines[o]),
                        });
                    }
                }
                DiffOp::Delete { .. } | DiffOp::Insert { .. } | DiffOp::Replace { .. } => {
                    let olds: Vec<usize> = old_range.collect();
                    let news: Vec<usize> = new_range.collect();
                    for i in 0..olds.len().max(news.len()) {
                        let o = olds.get(i).copied();
                        let n = news.get(i).copied();
                        split.push(SplitRow {
                            kind: match (o, n) {
                                (Some(_), Some(_)) => "replace",
                                (Some(_), None) => "delete",
                                _ => "insert",
                            },
                            left_no: o.map(|o| o + 1),
                            left: o.map(|o| line(old_lines[o])),
                            right_no: n.map(|n| n + 1),
                            right: n.map(|n| line(new_lines[n])),
                        });
                    }
                    for &o in &olds {
                        unified.push(UnifiedRow {
                            kind: "delete",
                            old_no: Some(o + 1),
                            new_no: None,
                            text: line(old_lines[o]),
                        });
                    }
                    for &n in &news {
                        unified.push(UnifiedRow {
                            kind: "insert",
                            old_no: None,
                            new_no: Some(n + 1),
                            text: line(new_lines[n]),
                        });
                    }
                }
            }
        }
    }
    if groups.is_empty() || (added == 0 && removed == 0) {
        split.clear();
        unified.clear();
    }
    TextChange {
        split,
        unified,
        added,
        removed,
        changed: added > 0 || removed > 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_line_is_a_replace_row_and_two_unified_lines() {
        let d = text("a\nb\nc\n", "a\nB\nc\nd\n");
        assert!(d.changed);
        assert_eq!((d.added, d.removed), (2, 1));
        let kinds: Vec<&str> = d.split.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, ["equal", "replace", "equal", "insert"]);
        assert_eq!(d.split[1].left.as_deref(), Some("b"));
        assert_eq!(d.split[1].right.as_deref(), Some("B"));
        let uni: Vec<(&str, &str)> = d
            .unified
            .iter()
            .map(|r| (r.kind, r.text.as_str()))
            .collect();
        assert_eq!(
            uni,
            [
                ("hunk", "@@ -1,3 +1,4 @@"),
                ("equal", "a"),
                ("delete", "b"),
                ("insert", "B"),
                ("equal", "c"),
                ("insert", "d"),
            ]
        );
    }

    #[test]
    fn identical_texts_have_no_rows() {
        let d = text("same\n", "same\n");
        assert!(!d.changed);
        assert!(d.split.is_empty() && d.unified.is_empty());
    }

    #[test]
    fn far_apart_changes_are_separate_hunks() {
        let old: String = (1..=20).map(|i| format!("line {i}\n")).collect();
        let new = old
            .replace("line 2\n", "line two\n")
            .replace("line 19\n", "line nineteen\n");
        let d = text(&old, &new);
        assert_eq!(d.unified.iter().filter(|r| r.kind == "hunk").count(), 2);
        assert!(d.split.iter().any(|r| r.kind == "gap"));
    }
}
