//! How a request ended, as the events file and the request log line name it.

use serde::{Deserialize, Serialize};

/// How a request ended. Written in the events file as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered (whatever the status upstream chose).
    Ok,
    /// Refused by promptgate before going upstream (4xx).
    Rejected,
    /// promptgate's own failure (5xx other than the two below).
    Error,
    /// No connection to upstream, or it failed before answering (502).
    UpstreamUnreachable,
    /// Upstream did not answer, or did not finish, in time (504, or a cut stream).
    UpstreamTimeout,
    /// The upstream's body failed after the status was sent.
    UpstreamError,
    /// The client went away before the answer was over.
    ClientClosed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Error => "error",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientClosed => "client_closed",
        }
    }

    /// The outcome of an error answered with `status` before anything was relayed.
    pub fn of_status(status: u16) -> Self {
        match status {
            502 => Outcome::UpstreamUnreachable,
            504 => Outcome::UpstreamTimeout,
            500..=599 => Outcome::Error,
            _ => Outcome::Rejected,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_written_as_before() {
        for outcome in [
            Outcome::Ok,
            Outcome::Rejected,
            Outcome::Error,
            Outcome::UpstreamUnreachable,
            Outcome::UpstreamTimeout,
            Outcome::UpstreamError,
            Outcome::ClientClosed,
        ] {
            let text = serde_json::to_string(&outcome).unwrap();
            assert_eq!(text, format!("\"{}\"", outcome.as_str()));
            assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), outcome);
        }
    }
}
