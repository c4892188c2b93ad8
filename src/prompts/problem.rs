//! A validation problem: what is wrong, in which file, on which line.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with the prompt files. `file` is relative to the prompts folder so the
/// message reads the same on a laptop and in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(file: impl AsRef<Path>, line: Option<usize>, message: impl Into<String>) -> Self {
        Problem {
            file: file.as_ref().to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found while loading a prompt folder; loading never stops at the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_names_file_and_line() {
        let p = Problem::new("support/prompt.yaml", Some(4), "unknown key `activ`");
        assert_eq!(p.to_string(), "support/prompt.yaml:4: unknown key `activ`");
        let p = Problem::new("support", None, "no version files");
        assert_eq!(p.to_string(), "support: no version files");
    }
}
