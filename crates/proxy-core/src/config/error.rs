//! Config errors: file, field path, what is wrong.

use std::fmt;

/// Separates the field path from the message while the error travels
/// through serde-saphyr's error type.
pub(super) const PATH_MARK: &str = "@@latchkey-path@@";

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted field path such as `routes[1].inject.header`; empty for the
    /// whole document.
    pub path: String,
    /// What is wrong, and where helpful how to fix it. Never a secret value.
    pub message: String,
}

impl FieldError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Everything wrong with one config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as given on the command line.
    pub file: String,
    /// The problems found, in document order where known.
    pub errors: Vec<FieldError>,
}

impl ConfigError {
    /// Several problems in `file`.
    pub fn new(file: &str, errors: Vec<FieldError>) -> Self {
        Self {
            file: file.to_string(),
            errors,
        }
    }

    /// One problem in `file`.
    pub fn single(file: &str, path: &str, message: impl Into<String>) -> Self {
        Self::new(file, vec![FieldError::new(path, message)])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if e.path.is_empty() {
                write!(f, "{}: {}", self.file, e.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file, e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns a serde-saphyr error into a [`ConfigError`].
///
/// serde-saphyr renders a snippet of the offending YAML line, which may hold
/// a literal secret; only the message and the line/column are kept.
pub(super) fn from_parse_error(file: &str, err: &serde_saphyr::Error) -> ConfigError {
    match err.without_snippet() {
        // The library's message names its own multi-document API.
        serde_saphyr::Error::MultipleDocuments { location, .. } => {
            return ConfigError::single(
                file,
                "",
                format!(
                    "the file holds several YAML documents (a second `---` at line {}); latchkey reads one",
                    location.line()
                ),
            );
        }
        serde_saphyr::Error::Eof { .. } => return empty(file),
        _ => {}
    }
    let full = err.to_string();
    let (path, message) = match full.split_once(PATH_MARK) {
        Some((_, rest)) => match rest.split_once(PATH_MARK) {
            Some((path, msg)) => (path.to_string(), first_line(msg)),
            None => (String::new(), first_line(rest)),
        },
        None => (String::new(), first_line(&full)),
    };
    let path = if path == "." { String::new() } else { path };
    if let Some((path, message)) = duplicate_key(&path, &message) {
        return ConfigError::single(file, &path, message);
    }
    ConfigError::single(file, &path, redact_found_values(&message))
}

/// A file with no YAML content: only what is missing is worth saying.
pub(super) fn empty(file: &str) -> ConfigError {
    ConfigError::single(file, "", "the config is empty: proxy.listen is required")
}

/// Whether `text` holds no YAML content: only blank lines, comments and
/// document markers.
pub(super) fn is_blank_yaml(text: &str) -> bool {
    text.trim_start_matches('\u{feff}').lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---" || l == "..."
    })
}

/// saphyr's `duplicate mapping key: KEY, set DuplicateKeyPolicy in Options
/// if acceptable at ...` (a library hint, at a path ending in `?`) as the
/// field that is set twice. (Keys are field names, quoted like unknown
/// ones are.)
fn duplicate_key(path: &str, message: &str) -> Option<(String, String)> {
    let rest = message.strip_prefix("duplicate mapping key: ")?;
    let key = rest.split([',', ' ']).next().unwrap_or_default();
    let at = rest
        .find(" at line ")
        .map(|i| &rest[i..])
        .unwrap_or_default();
    let parent = path.strip_suffix('?').unwrap_or(path).trim_end_matches('.');
    let field = match (parent.is_empty(), key.is_empty()) {
        (_, true) => parent.to_owned(),
        (true, false) => key.to_owned(),
        (false, false) => format!("{parent}.{key}"),
    };
    Some((field, format!("is set twice; keep one{at}")))
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// serde messages quote the unexpected value (`invalid type: string "abc"`,
/// ``unknown variant `abc` ``); the value may be a misplaced secret, so the
/// quoted part is dropped.
fn redact_found_values(msg: &str) -> String {
    // saphyr's hint for an empty `key:` names a Rust type, not the config.
    if msg.starts_with("cannot deserialize null into") {
        return "is empty: give it a value (a key with nothing after the colon is null in YAML)"
            .to_string();
    }
    let msg = match msg.strip_prefix("unknown variant `") {
        Some(rest) => match rest.split_once('`') {
            Some((_, tail)) => format!("unknown variant (value hidden){tail}"),
            None => "unknown variant".to_string(),
        },
        None => msg.to_string(),
    };
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    let mut chars = msg.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if !in_quote && out.ends_with("string ") => {
                in_quote = true;
                out.push_str("\"…\"");
            }
            '"' if in_quote => in_quote = false,
            '\\' if in_quote => {
                chars.next();
            }
            _ if in_quote => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_string_values_are_redacted() {
        assert_eq!(
            redact_found_values(r#"invalid type: string "s3cr3t", expected a map"#),
            r#"invalid type: string "…", expected a map"#
        );
        assert_eq!(
            redact_found_values("unknown variant `s3cr3t`, expected one of env, file"),
            "unknown variant (value hidden), expected one of env, file"
        );
        assert_eq!(
            redact_found_values("unknown field `foo`, expected one of `id`"),
            "unknown field `foo`, expected one of `id`"
        );
    }

    /// An empty `client_id:` is named as empty, not as a Rust type.
    #[test]
    fn an_empty_value_says_so() {
        let yaml = "proxy: { listen: 127.0.0.1:0 }\ncredentials:\n  - id: o\n    oauth2:\n      grant: client_credentials\n      token_url: https://idp.example/token\n      client_id:\n";
        let e = crate::config::Config::from_yaml(yaml, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("credentials[0].oauth2.client_id: is empty: give it a value"),
            "{e}"
        );
        assert!(!e.contains("Option<"), "{e}");
    }
}
