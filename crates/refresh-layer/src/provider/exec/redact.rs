//! Cutting what a command printed on stdout out of its stderr, before
//! stderr is logged.
//!
//! Which part of stdout is the token is known only when stdout parses, and
//! a `sh -x` wrapper or a `--debug` flag traces the token to stderr whether
//! it parses or not (the command timed out after printing it, or printed a
//! malformed `expires_in` next to it). So every secret candidate in what
//! stdout printed is cut out, on every path:
//!
//! - stdout that is a JSON object or array: every string value in it, at
//!   any depth, of at least [`MIN_CANDIDATE`] characters, decoded and, if
//!   it has escapes (`ab\/cd`), as written;
//! - any other stdout (a raw token, JSON cut short, a usage text): every
//!   word of at least [`MIN_CANDIDATE`] characters, split at whitespace,
//!   and each word again at quotes and JSON punctuation (`{"token":"abc`
//!   yields `abc` too);
//! - and the token parsed from it, whatever its length (see
//!   [`Secrets::add`]).
//!
//! Occurrences are found on the original text and merged, so two secrets
//! that overlap in stderr are both hidden whole.

use std::collections::BTreeSet;

/// Shorter strings and words of stdout are not taken as secrets: cutting
/// every `true`, `v1` or `{` out of stderr would make it unreadable.
pub(super) const MIN_CANDIDATE: usize = 4;

/// With more distinct candidates than this (a command that printed pages
/// on stdout), stderr is not logged at all: one left in could be the token,
/// and cutting out thousands would cost too much.
pub(super) const MAX_CANDIDATES: usize = 1024;

/// What is replaced by `[redacted]` in the logged stderr. No `Debug`: it
/// holds secrets.
#[derive(Default)]
pub(super) struct Secrets {
    set: BTreeSet<String>,
}

impl Secrets {
    /// The secret candidates in what stdout printed (see the module docs).
    pub(super) fn printed(stdout: &[u8]) -> Self {
        let mut secrets = Self::default();
        match serde_json::from_slice::<serde_json::Value>(stdout) {
            Ok(json @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
                secrets.add_strings(&json);
                secrets.add_escaped(&String::from_utf8_lossy(stdout));
            }
            // A bare JSON string or number is a raw token as much as JSON.
            _ => secrets.add_words(&String::from_utf8_lossy(stdout)),
        }
        secrets
    }

    /// Adds `secret` (if not empty), whatever its length: a token known to
    /// be one.
    pub(super) fn add(&mut self, secret: &str) {
        if !secret.is_empty() {
            self.set.insert(secret.to_owned());
        }
    }

    fn add_candidate(&mut self, candidate: &str) {
        if candidate.chars().count() >= MIN_CANDIDATE {
            self.add(candidate);
        }
    }

    fn add_strings(&mut self, json: &serde_json::Value) {
        match json {
            serde_json::Value::String(s) => self.add_candidate(s),
            serde_json::Value::Array(items) => items.iter().for_each(|v| self.add_strings(v)),
            serde_json::Value::Object(fields) => fields.values().for_each(|v| self.add_strings(v)),
            serde_json::Value::Null | serde_json::Value::Bool(_) | serde_json::Value::Number(_) => {
            }
        }
    }

    /// The JSON's strings that hold escapes, as written (`ab\/cd`, as PHP
    /// writes `ab/cd`; `\u002b`): a trace of the command shows them so,
    /// not decoded.
    fn add_escaped(&mut self, json: &str) {
        for piece in json.split(['"', '\'', '{', '}', '[', ']', ',', ':']) {
            if piece.contains('\\') {
                self.add_candidate(piece.trim());
            }
        }
    }

    fn add_words(&mut self, text: &str) {
        for word in text.split_whitespace() {
            self.add_candidate(word);
            for piece in word.split(['"', '\'', '{', '}', '[', ']', ',', ':', '\\']) {
                self.add_candidate(piece);
            }
        }
    }

    /// Whether there are too many candidates to cut out (see
    /// [`MAX_CANDIDATES`]).
    pub(super) fn too_many(&self) -> bool {
        self.set.len() > MAX_CANDIDATES
    }

    /// `text` with every occurrence of every secret replaced by
    /// `[redacted]` (once per run of hidden text).
    pub(super) fn redact(&self, text: &str) -> String {
        let mut hidden = vec![false; text.len()];
        for secret in &self.set {
            for (at, _) in text.match_indices(secret.as_str()) {
                if let Some(bytes) = hidden.get_mut(at..at + secret.len()) {
                    bytes.fill(true);
                }
            }
        }
        let mut out = String::with_capacity(text.len());
        let mut in_secret = false;
        // A match starts and ends on char boundaries (both are valid UTF-8),
        // so a char is hidden whole or not at all.
        for (at, c) in text.char_indices() {
            if hidden.get(at).copied().unwrap_or(false) {
                if !in_secret {
                    out.push_str("[redacted]");
                }
                in_secret = true;
            } else {
                in_secret = false;
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_values_at_any_depth() {
        let s = Secrets::printed(
            br#"{"kind":"ExecCredential","status":{"token":"tok-nested","n":12345678},"list":["tok-in-list","abc"]}"#,
        );
        let text = "+ echo tok-nested tok-in-list 12345678 abc ExecCredential status";
        assert_eq!(
            s.redact(text),
            "+ echo [redacted] [redacted] 12345678 abc [redacted] status"
        );
    }

    /// A token whose JSON spelling has escapes (`\/`, as PHP's
    /// `json_encode` writes `/`; `\u002b`) is cut out as a trace shows it,
    /// escapes and all, as well as decoded.
    #[test]
    fn json_strings_as_written_with_their_escapes() {
        let s = Secrets::printed(br#"{"access_token":"ab\/cd+ef==","other":"x\u002byz"}"#);
        assert_eq!(
            s.redact(
                r#"+ echo '{"access_token":"ab\/cd+ef==","other":"x\u002byz"}' ab/cd+ef== x+yz"#
            ),
            r#"+ echo '{"access_token":"[redacted]","other":"[redacted]"}' [redacted] [redacted]"#
        );
    }

    #[test]
    fn words_of_other_output_including_json_cut_short() {
        let s = Secrets::printed(b"  tok-raw-token\n");
        assert_eq!(s.redact("T=tok-raw-token."), "T=[redacted].");
        let s = Secrets::printed(br#"{"access_token":"tok-cut-short"#);
        assert_eq!(s.redact("+ T=tok-cut-short"), "+ T=[redacted]");
        // A bare JSON number or string is a raw token too.
        let s = Secrets::printed(b"123456789");
        assert_eq!(s.redact("got 123456789"), "got [redacted]");
        let s = Secrets::printed(b"");
        assert_eq!(s.redact("nothing printed"), "nothing printed");
    }

    #[test]
    fn overlapping_secrets_are_hidden_whole_and_runs_once() {
        let mut s = Secrets::default();
        s.add("abcdef");
        s.add("defghi");
        s.add("é-x");
        assert_eq!(s.redact("0abcdefghi1 é-xé-x"), "0[redacted]1 [redacted]");
        s.add("");
        assert_eq!(s.redact("plain"), "plain");
    }

    #[test]
    fn too_many_candidates() {
        let words: Vec<String> = (0..=MAX_CANDIDATES).map(|i| format!("w{i:04}")).collect();
        assert!(Secrets::printed(words.join(" ").as_bytes()).too_many());
        assert!(!Secrets::printed(words[1..].join(" ").as_bytes()).too_many());
    }
}
