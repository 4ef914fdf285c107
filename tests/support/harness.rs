//! Boots the whole latchkey proxy in-process on `127.0.0.1:0`.

use latchkey::{Config, Running};

/// A running proxy under test.
pub struct TestProxy {
    /// The running instance (taken by `stop`).
    pub running: Option<Running>,
    /// `http://127.0.0.1:PORT` of the proxy listener.
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
}

/// Starts latchkey from YAML. Use `127.0.0.1:0` for listen addresses.
pub async fn start_proxy(yaml: &str) -> TestProxy {
    let config = Config::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("config: {e}"));
    let running = latchkey::start(config, "test.yaml")
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    TestProxy {
        base: format!("http://{}", running.proxy_addr),
        admin: running
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        running: Some(running),
    }
}

/// Starts latchkey from YAML with [`latchkey::StartOptions`] (e.g. an
/// in-memory audit sink).
pub async fn start_proxy_with(yaml: &str, options: latchkey::StartOptions) -> TestProxy {
    let config = Config::from_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("config: {e}"));
    let running = latchkey::start_with(config, "test.yaml", options)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    TestProxy {
        base: format!("http://{}", running.proxy_addr),
        admin: running
            .admin_addr
            .map(|a| format!("http://{a}"))
            .unwrap_or_default(),
        running: Some(running),
    }
}

impl TestProxy {
    /// Full URL for `path` on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown; true if every in-flight request finished.
    pub async fn stop(mut self) -> bool {
        match self.running.take() {
            Some(r) => r.shutdown().await,
            None => true,
        }
    }
}
