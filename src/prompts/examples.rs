//! `examples.jsonl`: a prompt's few-shot examples, one JSON object a line.

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExample {
    #[serde(alias = "input_text")]
    input: String,
    #[serde(alias = "output_text")]
    output: String,
    category: Option<String>,
    quality_score: Option<f64>,
}

/// One checked example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub input: String,
    pub output: String,
    pub category: Option<String>,
    pub quality_score: f64,
}

/// Parses the file, reporting every bad line with its number. Blank lines are skipped.
pub fn parse(text: &str) -> Result<Vec<Example>, Vec<(usize, String)>> {
    let mut examples = Vec::new();
    let mut problems = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawExample = match serde_json::from_str(line) {
            Ok(raw) => raw,
            Err(e) => {
                problems.push((number, format!("not a valid example: {e}")));
                continue;
            }
        };
        let quality_score = raw.quality_score.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&quality_score) {
            problems.push((
                number,
                format!("`quality_score` must be between 0 and 1, not {quality_score}"),
            ));
            continue;
        }
        examples.push(Example {
            input: raw.input,
            output: raw.output,
            category: raw.category,
            quality_score,
        });
    }
    if problems.is_empty() {
        Ok(examples)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_parse_with_aliases_and_defaults() {
        let text = "{\"input\": \"a\", \"output\": \"b\", \"category\": \"neg\", \"quality_score\": 0.9}\n\n\
                    {\"input_text\": \"c\", \"output_text\": \"d\"}\n";
        let examples = parse(text).unwrap();
        assert_eq!(examples.len(), 2);
        assert_eq!(examples[0].category.as_deref(), Some("neg"));
        assert_eq!(examples[1].input, "c");
        assert_eq!(examples[1].quality_score, 1.0);
    }

    #[test]
    fn every_bad_line_is_reported() {
        let text = "{\"input\": \"a\"}\n{\"input\": \"a\", \"output\": \"b\", \"quality_score\": 2}\nnot json\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(
            problems.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(
            problems[0].1.contains("missing field `output`"),
            "{problems:?}"
        );
    }
}
