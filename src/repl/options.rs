//! Replication's own option types; the config maps TOML onto them (`config`), replication
//! owns them.

/// DRBD's `on-congestion`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnCongestion {
    Block,
    PullAhead,
    Disconnect,
}

impl OnCongestion {
    pub fn as_str(self) -> &'static str {
        match self {
            OnCongestion::Block => "block",
            OnCongestion::PullAhead => "pull-ahead",
            OnCongestion::Disconnect => "disconnect",
        }
    }
}
