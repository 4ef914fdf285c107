//! latchkey: a credential-injecting reverse proxy.
//!
//! This crate is the binary's library half: it loads config, builds the proxy
//! from [`proxy_core`], binds the proxy and admin listeners, and handles
//! shutdown. Everything the binary does is reachable from here, so tests boot
//! the whole proxy in-process with [`start`] on `127.0.0.1:0`.
//!
//! - [`app`]: [`start`] a proxy from a config, [`Running`] to stop it.
//! - [`build`]: a [`Proxy`](build::Proxy) from a config (sources, stacks, audit).
//! - [`server`]: the proxy listener (HTTP/1.1 + h2, upgrades, graceful drain).
//! - [`tls`]: TLS on the proxy listener, certificate reload, client certificates.
//! - [`admin`]: `/healthz`, `/readyz` and the management API.
//! - [`cli`]: `latchkey run | check | demo | ctl | triage`.
//! - [`ctl`]: the management API client behind `latchkey ctl`.
//! - [`reload`]: config reload on file change, SIGHUP or the management API.
//! - [`demo`]: the self-contained first-run demo.

pub mod admin;
pub mod app;
pub mod build;
pub mod cli;
pub mod ctl;
pub mod demo;
pub mod observer;
pub mod reload;
pub mod server;
pub mod tls;

pub use app::{Running, StartError, start, start_with};
pub use build::StartOptions;
pub use proxy_core::config::Config;
