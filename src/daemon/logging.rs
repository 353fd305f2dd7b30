//! Where the daemon's log goes: text or JSON lines on stderr, or the systemd journal with
//! structured fields (RESOURCE, ACTION, ... as journal fields, the level as PRIORITY) when
//! systemd runs it.
//!
//! `--log-format auto` (the default) chooses the journal exactly when systemd says stderr is
//! connected to it: `$JOURNAL_STREAM` holds `DEVICE:INODE` of that stream (systemd.exec(5)),
//! and it must match stderr's own, since a child whose stderr was redirected inherits the
//! variable but not the stream. If the journal socket cannot be reached the daemon says so on
//! stderr and logs there as text.

use std::os::fd::AsFd;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Text,
    Json,
    Journal,
}

/// The sink for `--log-format FORMAT`, given `$JOURNAL_STREAM` and stderr's (device, inode).
pub fn choose(format: &str, journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> Sink {
    match format {
        "json" => Sink::Json,
        "text" => Sink::Text,
        "journal" => Sink::Journal,
        _ if journal_stream
            .and_then(parse_stream)
            .is_some_and(|s| Some(s) == stderr) =>
        {
            Sink::Journal
        }
        _ => Sink::Text,
    }
}

/// `DEVICE:INODE` (both decimal) as systemd writes `$JOURNAL_STREAM`.
fn parse_stream(v: &str) -> Option<(u64, u64)> {
    let (d, i) = v.trim().split_once(':')?;
    Some((d.parse().ok()?, i.parse().ok()?))
}

fn stderr_id() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr().as_fd()).ok()?;
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Set up the daemon's logging (`DRL_LOG` filters, default `info`).
pub fn init(format: &str) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("DRL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stream = std::env::var("JOURNAL_STREAM").ok();
    let mut sink = choose(format, stream.as_deref(), stderr_id());
    if sink == Sink::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                let layer = layer.with_syslog_identifier("drl".into());
                let _ = tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .try_init();
                return;
            }
            Err(e) => {
                eprintln!(
                    "drl daemon: the journal is not reachable ({e}); logging to stderr as text"
                );
                sink = Sink::Text;
            }
        }
    }
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if sink == Sink::Json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_only_when_journal_stream_names_our_stderr() {
        let me = Some((64769, 12345));
        assert_eq!(choose("auto", Some("64769:12345"), me), Sink::Journal);
        assert_eq!(choose("auto", Some("64769:12345\n"), me), Sink::Journal);
        // Inherited by a child whose stderr goes elsewhere: not the journal.
        assert_eq!(choose("auto", Some("64769:999"), me), Sink::Text);
        assert_eq!(choose("auto", None, me), Sink::Text);
        assert_eq!(choose("auto", Some("garbage"), me), Sink::Text);
        assert_eq!(choose("auto", Some("64769:12345"), None), Sink::Text);
        // An explicit format wins.
        assert_eq!(choose("json", Some("64769:12345"), me), Sink::Json);
        assert_eq!(choose("text", Some("64769:12345"), me), Sink::Text);
        assert_eq!(choose("journal", None, None), Sink::Journal);
    }

    #[test]
    fn stderr_has_an_identity_to_compare() {
        assert!(stderr_id().is_some());
    }
}
