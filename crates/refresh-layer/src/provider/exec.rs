//! The exec provider: a command prints the token.
//!
//! The output is either a Kubernetes `ExecCredential` (what `kubectl`
//! credential plugins such as `aws eks get-token` or `gke-gcloud-auth-plugin`
//! print) or `{"access_token": ..., "expires_in": ...}`. The command runs
//! without a shell, with stdin closed, in its own process group; the group
//! is killed when the command exits, overruns its timeout, or the fetch is
//! dropped (see [`process`]).
//!
//! Stdout holds the token, so it is never logged and never quoted in an
//! error. Stderr is for humans and is logged line by line (capped) once the
//! command has ended, which is how a plugin's "please log in again" reaches
//! the operator; what stdout printed is cut out of it first, on every path
//! (success, failure exit, unparsable output, timeout): a `sh -x` wrapper
//! or a `--debug` flag echoes the token there (see [`redact`]).

use super::oauth2::parse_expires_in;
use super::timestamp::parse_rfc3339;
use super::{ProviderError, TokenProvider};
use crate::token::{StoredCredential, Token};
use futures_util::future::BoxFuture;
use process::Outcome;
use proxy_core::config::ExecConfig;
use redact::Secrets;
use secrecy::{ExposeSecret as _, SecretString};
use std::fmt;
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

mod process;
mod redact;

const UNPARSABLE: &str =
    "printed output that is not an ExecCredential or {access_token, expires_in}";

/// Runs a command that prints a token.
pub struct ExecProvider {
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    without_env: Vec<String>,
    timeout: Duration,
}

impl fmt::Debug for ExecProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments and environment values may carry secrets (a
        // `--client-secret=...` flag, an API key): show only their shape.
        f.debug_struct("ExecProvider")
            .field("program", &self.program)
            .field("args", &self.args.len())
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("without_env", &self.without_env)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ExecProvider {
    /// Builds the provider. An empty command (rejected by config validation)
    /// fails on every fetch rather than here.
    pub fn new(cfg: &ExecConfig) -> Self {
        let mut command = cfg.command.iter().cloned();
        Self {
            program: command.next().unwrap_or_default(),
            args: command.collect(),
            env: cfg
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            without_env: Vec::new(),
            timeout: cfg.timeout,
        }
    }

    /// Removes these variables from the environment the command inherits
    /// (latchkey's own secrets: the variables its configuration reads with
    /// `{ env: NAME }`). A variable set in the exec config's own `env` is
    /// still passed. Calls add up.
    #[must_use]
    pub fn without_env<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.without_env.extend(names.into_iter().map(Into::into));
        self
    }

    fn error(&self, problem: impl Into<String>) -> ProviderError {
        ProviderError::Exec {
            command: self.program.clone(),
            problem: problem.into(),
        }
    }

    async fn run(&self) -> Result<Token, ProviderError> {
        if self.program.is_empty() {
            return Err(ProviderError::Config("exec command is empty".into()));
        }
        let mut command = tokio::process::Command::new(&self.program);
        command.args(&self.args);
        for name in &self.without_env {
            command.env_remove(name);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        let outcome = process::run(&mut command, self.timeout)
            .await
            .map_err(|e| self.error(format!("could not be started: {e}")))?;
        let (status, stdout, stderr) = match outcome {
            Outcome::TimedOut { stdout, stderr } => {
                // It may have printed the token before it hung.
                stderr.log(&self.program, &Secrets::printed(stdout.printed()));
                return Err(ProviderError::Timeout(self.timeout));
            }
            Outcome::Exited {
                status,
                stdout,
                stderr,
            } => (status, stdout, stderr),
        };
        // Parsed even after a failure exit: a token it printed is then known
        // (whatever its length) and cut out of the logged stderr too, with
        // everything else stdout printed that could be one.
        let parsed = stdout.whole().and_then(parse_output);
        let mut secrets = Secrets::printed(stdout.printed());
        drop(stdout);
        if let Ok(token) = &parsed {
            secrets.add(token.access_token.expose_secret());
            if let Some(refresh) = &token.refresh_token {
                secrets.add(refresh.expose_secret());
            }
        }
        stderr.log(&self.program, &secrets);
        let status = status.map_err(|e| self.error(format!("could not be waited for: {e}")))?;
        if !status.success() {
            return Err(self.error(describe_exit(status)));
        }
        parsed.map_err(|problem| self.error(problem))
    }
}

impl TokenProvider for ExecProvider {
    fn kind(&self) -> &'static str {
        "exec"
    }

    /// The command (program and arguments) and its environment, hashed:
    /// an argument or a value may be a secret. The environment is part of
    /// it: the same command with another `AWS_PROFILE` gets another
    /// account's token, which a stored state of the first must not stand
    /// in for.
    /// (Without an environment, the same as before it counted: a stored
    /// state keeps its owner across the upgrade.)
    fn identity(&self) -> Option<String> {
        let env = (!self.env.is_empty()).then_some(b"\0env".as_slice());
        let parts = std::iter::once(b"exec".as_slice())
            .chain(std::iter::once(self.program.as_bytes()))
            .chain(self.args.iter().map(String::as_bytes))
            .chain(env)
            .chain(
                self.env
                    .iter()
                    .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
            );
        Some(super::fingerprint(parts))
    }

    fn time_limit(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn fetch<'a>(
        &'a self,
        _current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        Box::pin(self.run())
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        // Unix: killed by a signal; the status' Display names it.
        None => format!("ended abnormally ({status})"),
    }
}

/// The token from the command's stdout. Errors are fixed texts: the output
/// may hold a token even when it is malformed.
fn parse_output(out: &[u8]) -> Result<Token, String> {
    let json: serde_json::Value = serde_json::from_slice(out).map_err(|_| UNPARSABLE.to_owned())?;
    if json.get("kind").and_then(serde_json::Value::as_str) == Some("ExecCredential") {
        return parse_exec_credential(&json);
    }
    match json.get("access_token") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => {
            let expires_in =
                parse_expires_in(json.get("expires_in")).map_err(|e| format!("printed {e}"))?;
            Ok(Token {
                access_token: SecretString::from(t.clone()),
                expires_in,
                refresh_token: None,
            })
        }
        _ => Err(UNPARSABLE.to_owned()),
    }
}

/// `client.authentication.k8s.io` `ExecCredential`: `status.token` and an
/// optional RFC 3339 `status.expirationTimestamp`.
fn parse_exec_credential(json: &serde_json::Value) -> Result<Token, String> {
    let status = json.get("status");
    let token = match status.and_then(|s| s.get("token")) {
        Some(serde_json::Value::String(t)) if !t.is_empty() => SecretString::from(t.clone()),
        _ => {
            return Err("printed an ExecCredential without status.token (client certificates are not supported)".into());
        }
    };
    let expires_in = match status.and_then(|s| s.get("expirationTimestamp")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(ts)) => {
            let at = parse_rfc3339(ts).ok_or_else(|| {
                "printed an ExecCredential whose status.expirationTimestamp is not RFC 3339"
                    .to_owned()
            })?;
            // Already expired is zero, not an error: the cache then refreshes
            // again (with backoff) instead of failing outright.
            Some(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            )
        }
        Some(_) => {
            return Err(
                "printed an ExecCredential whose status.expirationTimestamp is not a string".into(),
            );
        }
    };
    Ok(Token {
        access_token: token,
        expires_in,
        refresh_token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sh(script: &str, timeout: Duration) -> ExecProvider {
        ExecProvider::new(&ExecConfig {
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: proxy_core::config::PlainValues(BTreeMap::from([(
                "CANARY_TOKEN".to_owned(),
                "tok-canary".to_owned(),
            )])),
            timeout,
        })
    }

    async fn run(script: &str) -> Result<Token, ProviderError> {
        sh(script, Duration::from_secs(10)).fetch(None).await
    }

    /// Another environment is another provider: a stored state of one
    /// (another account's token) is not the other's. Without an
    /// environment the identity is the command's alone, as before.
    #[test]
    fn the_environment_is_part_of_the_identity() {
        let with = |env: &[(&str, &str)]| {
            ExecProvider::new(&ExecConfig {
                command: vec!["get-token".into(), "--json".into()],
                env: proxy_core::config::PlainValues(
                    env.iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                timeout: Duration::from_secs(10),
            })
            .identity()
        };
        let staging = with(&[("AWS_PROFILE", "staging")]);
        assert_ne!(staging, with(&[("AWS_PROFILE", "prod")]));
        assert_eq!(staging, with(&[("AWS_PROFILE", "staging")]));
        assert_eq!(
            with(&[]),
            Some(super::super::fingerprint([
                b"exec".as_slice(),
                b"get-token",
                b"--json"
            ]))
        );
    }

    #[tokio::test]
    async fn exec_credential_with_expiry() {
        let p = sh("", Duration::from_secs(1));
        assert_eq!(p.kind(), "exec");
        assert!(!p.rotates());
        let script = r#"echo "{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{\"token\":\"$CANARY_TOKEN\",\"expirationTimestamp\":\"$(date -u -d @$(( $(date +%s) + 3600 )) +%Y-%m-%dT%H:%M:%SZ)\"}}""#;
        let token = run(script).await.unwrap();
        assert_eq!(token.access_token.expose_secret(), "tok-canary");
        let left = token.expires_in.unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        assert!(token.refresh_token.is_none());
    }

    #[tokio::test]
    async fn exec_credential_without_or_with_past_expiry() {
        let token = run(r#"echo '{"kind":"ExecCredential","status":{"token":"t"}}'"#)
            .await
            .unwrap();
        assert_eq!(token.expires_in, None);
        let token = run(r#"echo '{"kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"2001-01-01T00:00:00Z"}}'"#)
            .await
            .unwrap();
        assert_eq!(token.expires_in, Some(Duration::ZERO));
        let token = run(r#"echo '{"kind":"ExecCredential","status":{"token":"t","expirationTimestamp":"2099-01-01T00:00:00Z"}}'"#)
            .await
            .unwrap();
        assert!(token.expires_in.unwrap() > Duration::from_secs(365 * 24 * 3600));
    }

    #[tokio::test]
    async fn access_token_form() {
        let token = run(r#"printf '{"access_token":"%s","expires_in":300}\n' "$CANARY_TOKEN""#)
            .await
            .unwrap();
        assert_eq!(token.access_token.expose_secret(), "tok-canary");
        assert_eq!(token.expires_in, Some(Duration::from_secs(300)));
        let token = run(r#"echo '{"access_token":"x"}'"#).await.unwrap();
        assert_eq!(token.expires_in, None);
    }

    #[tokio::test]
    async fn stderr_does_not_break_parsing() {
        let script = r#"echo 'warming up' >&2; i=0; while [ $i -lt 200 ]; do echo "noise $i" >&2; i=$((i+1)); done; echo '{"access_token":"x","expires_in":"60"}'"#;
        let token = run(script).await.unwrap();
        assert_eq!(token.expires_in, Some(Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn non_zero_exit_is_an_exec_error() {
        let err = run(r#"echo '{"access_token":"tok-canary"}'; echo 'login expired' >&2; exit 3"#)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProviderError::Exec {
                command: "sh".into(),
                problem: "exited with status 3".into()
            }
        );
    }

    #[tokio::test]
    async fn garbage_output_is_reported_without_quoting_it() {
        for script in [
            r#"echo "not json $CANARY_TOKEN""#,
            r#"echo "{\"token\":\"$CANARY_TOKEN\"}""#,
            r#"echo "{\"kind\":\"ExecCredential\",\"status\":{\"clientKeyData\":\"$CANARY_TOKEN\"}}""#,
            r#"echo "{\"access_token\":\"$CANARY_TOKEN\",\"expires_in\":\"later\"}""#,
            r#"echo "{\"kind\":\"ExecCredential\",\"status\":{\"token\":\"$CANARY_TOKEN\",\"expirationTimestamp\":\"tomorrow\"}}""#,
        ] {
            let err = run(script).await.unwrap_err();
            let ProviderError::Exec { problem, .. } = &err else {
                panic!("{script}: {err:?}")
            };
            assert!(problem.starts_with("printed"), "{script}: {problem}");
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains("canary"), "{script}: {text}");
            }
        }
        let err = run("echo 'not json'").await.unwrap_err();
        assert_eq!(err.to_string(), format!("command \"sh\" {UNPARSABLE}"));
    }

    #[tokio::test]
    async fn overrunning_command_times_out() {
        let started = tokio::time::Instant::now();
        let err = sh("sleep 5", Duration::from_millis(100))
            .fetch(None)
            .await
            .unwrap_err();
        assert_eq!(err, ProviderError::Timeout(Duration::from_millis(100)));
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the command was not killed"
        );
    }

    #[tokio::test]
    async fn missing_program_and_empty_command() {
        let p = ExecProvider::new(&ExecConfig {
            command: vec!["/nonexistent/latchkey-plugin".into()],
            env: Default::default(),
            timeout: Duration::from_secs(1),
        });
        let err = p.fetch(None).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Exec { problem, .. } if problem.starts_with("could not be started")),
            "{err:?}"
        );
        let p = ExecProvider::new(&ExecConfig {
            command: Vec::new(),
            env: Default::default(),
            timeout: Duration::from_secs(1),
        });
        assert!(matches!(p.fetch(None).await, Err(ProviderError::Config(_))));
    }

    #[test]
    fn debug_hides_arguments_and_env_values() {
        let p = sh("echo secret-arg", Duration::from_secs(1));
        let dbg = format!("{p:?}");
        assert!(
            !dbg.contains("secret-arg") && !dbg.contains("tok-canary"),
            "{dbg}"
        );
        assert!(dbg.contains("CANARY_TOKEN"), "{dbg}");
    }
}
