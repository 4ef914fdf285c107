//! Why a refresh ran ([`Trigger`]).

/// Why a refresh ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// Ahead of expiry, in the background.
    Proactive,
    /// No valid token (first use, or expired).
    Expired,
    /// A generation was invalidated (an upstream 401).
    Forced,
    /// An operator asked for it.
    Manual,
}

impl Trigger {
    /// The name used in logs, metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proactive => "proactive",
            Self::Expired => "expired",
            Self::Forced => "forced",
            Self::Manual => "manual",
        }
    }
}
