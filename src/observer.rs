//! [`CurrentObserver`]: refresh attempts reported to the audit trail and
//! metrics of the config in service, across reloads.
//!
//! A reload keeps the credential sources whose config did not change (so
//! they keep their tokens and their refresh schedule), and a source reports
//! its refresh attempts to the observer it was built with. Were that the
//! audit settings of the config it was first built under, a reload that
//! turns `audit.enabled` or `metrics.enabled` on would leave every kept
//! credential without refresh records and refresh metrics (its alerts
//! could never fire) until a restart, and one that turns them off would
//! leave them writing. So every source reports to the one observer the
//! process keeps ([`Kept`](crate::build::Kept)), which the config put in
//! service sets ([`CurrentObserver::serve`]): a refused reload changes
//! nothing. Tested in `tests/reload_audit_toggle.rs`.

use crate::build::StartOptions;
use arc_swap::ArcSwapOption;
use audit::metrics::AuditObserver;
use proxy_core::config::Config;
use proxy_core::credential::CredentialSource;
use proxy_core::facts::{RefreshEvent, RefreshObserver};
use std::sync::Arc;

/// Reports refresh attempts as the config in service says; see the module
/// docs. Reports nothing until a config is served.
#[derive(Debug, Default)]
pub struct CurrentObserver {
    current: ArcSwapOption<AuditObserver>,
}

impl CurrentObserver {
    /// Puts the audit and metrics settings of `config` (in service from
    /// now) in force for every source's next report. When it turns metrics
    /// on, the credential gauges of `sources` are set from what each holds,
    /// so the expiry alert sees a credential kept by a reload before its
    /// next refresh.
    pub fn serve(
        &self,
        config: &Config,
        options: &StartOptions,
        sources: &[Arc<dyn CredentialSource>],
    ) {
        let sink = crate::build::audit_sink(config, options);
        let metrics = config.metrics.enabled;
        let had_metrics = self.current.load().as_ref().is_some_and(|o| o.metrics());
        self.current.store(
            (sink.is_some() || metrics).then(|| Arc::new(AuditObserver::new(sink, metrics))),
        );
        if metrics && !had_metrics {
            audit::metrics::republish_tls_certificate();
            for source in sources.iter().filter(|s| s.refreshes()) {
                let status = source.status();
                let last_ok = status
                    .last_refresh_at
                    .filter(|_| status.last_refresh_result == Some("ok"));
                if status.generation > 0 {
                    audit::metrics::record_credential_state(&status.id, status.expires_at, last_ok);
                }
            }
        }
    }
}

impl RefreshObserver for CurrentObserver {
    fn on_refresh(&self, event: &RefreshEvent) {
        if let Some(observer) = self.current.load().as_ref() {
            observer.on_refresh(event);
        }
    }

    fn on_adopted(&self, credential: &str, expires_at: Option<std::time::SystemTime>) {
        if let Some(observer) = self.current.load().as_ref() {
            observer.on_adopted(credential, expires_at);
        }
    }
}
