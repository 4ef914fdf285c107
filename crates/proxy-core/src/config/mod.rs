//! latchkey's configuration: the YAML shape, its parsing and its validation.
//!
//! [`Config::from_yaml`] parses with `serde-saphyr` (unknown fields are
//! rejected) through `serde_path_to_error`, then [`validate`] checks what types
//! cannot: references between sections, duplicate ids, ambiguous routes. Every
//! problem is reported as a [`ConfigError`] naming the file, the field path
//! (`routes[1].inject.header`) and what is wrong; all problems are collected so
//! one run of `latchkey check` shows them all.
//!
//! The types here are the config as written, with values that have a syntax
//! (durations, URLs, header names, socket addresses) already parsed.

mod checks;
mod credentials;
mod error;
mod refs;
mod serde_util;
mod types;
mod validate;

pub use checks::check_token_url;
pub use credentials::*;
pub use error::{ConfigError, FieldError};
pub use refs::{secret_refs, warnings};
pub use serde_util::{parse_duration, parse_size};
pub use types::*;
pub use validate::{is_valid_id, validate};

use std::path::Path;

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(&file, "", format!("cannot read the config file: {e}"))
        })?;
        Self::from_yaml(&text, &file)
    }

    /// Parses and validates YAML `text`; `file` names it in errors.
    pub fn from_yaml(text: &str, file: &str) -> Result<Config, ConfigError> {
        if error::is_blank_yaml(text) {
            return Err(error::empty(file));
        }
        let config: Config = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                <serde_saphyr::Error as serde::de::Error>::custom(PathTagged {
                    path,
                    message: e.into_inner().to_string(),
                })
            })
        })
        .map_err(|e| error::from_parse_error(file, &e))?;
        validate(&config).map_err(|errors| ConfigError::new(file, errors))?;
        Ok(config)
    }
}

/// Carries the field path through serde-saphyr's error type so the final
/// message can name it (see `error::from_parse_error`).
struct PathTagged {
    path: String,
    message: String,
}

impl std::fmt::Display for PathTagged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", error::PATH_MARK, self.path, error::PATH_MARK)?;
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests;
