//! systemd's service notification protocol (`sd_notify(3)`): a few lines over a datagram
//! socket, so no libsystemd and no crate.
//!
//! With `Type=notify`, systemd passes the path of its socket in `$NOTIFY_SOCKET` (a file path,
//! or an abstract name starting with `@`). The daemon sends `READY=1` once its control socket
//! and every resource are up, `RELOADING=1` + `MONOTONIC_USEC=` at the start of a reload and
//! `READY=1` at its end ([`reloading`], [`ready`]; the reload itself is SIGHUP's handler),
//! `STOPPING=1` when it starts to drain, and `WATCHDOG=1` every half `$WATCHDOG_USEC` when the
//! unit has `WatchdogSec=`. Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.
//! A failed send is logged once and never stops the daemon.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Send `state` (newline-separated `KEY=VALUE` lines) to systemd; Ok(false) when not under
/// systemd.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(&path))?;
    }
    Ok(true)
}

fn send(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The daemon is up: control socket bound, resources open, exports listening.
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={status}"));
}

/// A reload (SIGHUP, `drl adjust`) starts; call [`ready`] when it is done.
pub fn reloading() {
    // systemd wants the CLOCK_MONOTONIC time of the reload start with RELOADING=1.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration; CLOCK_MONOTONIC
    // always exists on Linux (on failure `ts` stays zero).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let t = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
    send(&format!("RELOADING=1\nMONOTONIC_USEC={t}"));
}

/// The daemon is draining and about to exit.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining in-flight I/O");
}

/// The watchdog interval systemd expects pings in (`$WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Ping the watchdog every half interval for as long as the runtime's workers answer (a
/// runtime that stalls stops pinging, and systemd restarts the daemon), until `shutdown`.
pub async fn watchdog_loop(every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut t = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = t.tick() => send("WATCHDOG=1"),
            _ = shutdown.changed() => return,
        }
    }
}
