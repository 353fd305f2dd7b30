//! Socket options drl sets on its TCP connections, and `TCP_INFO` for the shaper and metrics.
//!
//! - `SO_PRIORITY` and `IP_TOS`/`IPV6_TCLASS` (DSCP) carry the traffic class, so tc on the
//!   host (or routers on the WAN) can enforce the same split as drl's own shaper.
//! - `TCP_NOTSENT_LOWAT` keeps the unsent part of the socket buffer small, so a class scheduler
//!   above the socket decides what goes next instead of a deep kernel queue.
//! - Keepalive and `TCP_USER_TIMEOUT` bound how long a dead peer goes unnoticed.
//!
//! All functions take a [`BorrowedFd`], so they work on std and tokio sockets alike.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd};

/// A failed `setsockopt`/`getsockopt`, naming the option and the value.
#[derive(Debug, thiserror::Error)]
pub enum SockoptError {
    #[error("setsockopt {option}={value}: {source}")]
    Set {
        option: &'static str,
        value: u64,
        source: io::Error,
    },
    #[error("getsockopt {option}: {source}")]
    Get {
        option: &'static str,
        source: io::Error,
    },
}

impl From<SockoptError> for io::Error {
    fn from(e: SockoptError) -> io::Error {
        let kind = match &e {
            SockoptError::Set { source, .. } | SockoptError::Get { source, .. } => source.kind(),
        };
        io::Error::new(kind, e)
    }
}

pub type Result<T> = std::result::Result<T, SockoptError>;

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    option: &'static str,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let source = io::Error::last_os_error();
        return Err(SockoptError::Set {
            option,
            value: value as u64,
            source,
        });
    }
    Ok(())
}

fn get_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    option: &'static str,
) -> Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live locals; len holds value's size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(SockoptError::Get {
            option,
            source: io::Error::last_os_error(),
        });
    }
    Ok(value)
}

fn clamp_int(v: u64) -> libc::c_int {
    v.min(libc::c_int::MAX as u64) as libc::c_int
}

/// `SO_PRIORITY`: the skb priority tc filters and qdiscs (prio, htb with `skbedit`) see.
/// Values above 6 need CAP_NET_ADMIN.
pub fn set_priority(fd: BorrowedFd<'_>, priority: u32) -> Result<()> {
    set_int(
        fd,
        libc::SOL_SOCKET,
        libc::SO_PRIORITY,
        "SO_PRIORITY",
        clamp_int(priority.into()),
    )
}

/// Read back `SO_PRIORITY`.
pub fn priority(fd: BorrowedFd<'_>) -> Result<u32> {
    get_int(fd, libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY").map(|v| v as u32)
}

/// The socket's address family (`SO_DOMAIN`).
fn domain(fd: BorrowedFd<'_>) -> Result<libc::c_int> {
    get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")
}

/// The TOS byte (DSCP << 2): `IP_TOS`, and also `IPV6_TCLASS` on IPv6 sockets (IP_TOS then
/// still covers IPv4-mapped peers). For TCP the kernel manages the two ECN bits itself and
/// ignores them here.
pub fn set_tos(fd: BorrowedFd<'_>, tos: u8) -> Result<()> {
    let tos = libc::c_int::from(tos);
    if domain(fd)? == libc::AF_INET6 {
        set_int(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_TCLASS,
            "IPV6_TCLASS",
            tos,
        )?;
    }
    set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS", tos)
}

/// Read back the TOS byte (`IPV6_TCLASS` on IPv6 sockets, else `IP_TOS`).
pub fn tos(fd: BorrowedFd<'_>) -> Result<u8> {
    let v = if domain(fd)? == libc::AF_INET6 {
        get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS")?
    } else {
        get_int(fd, libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS")?
    };
    Ok(v as u8)
}

/// `TCP_NOTSENT_LOWAT`: the socket reports writable only while fewer than `bytes` are unsent.
pub fn set_notsent_lowat(fd: BorrowedFd<'_>, bytes: u32) -> Result<()> {
    let v = clamp_int(bytes.into());
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        "TCP_NOTSENT_LOWAT",
        v,
    )
}

/// Read back `TCP_NOTSENT_LOWAT`.
pub fn notsent_lowat(fd: BorrowedFd<'_>) -> Result<u32> {
    get_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NOTSENT_LOWAT,
        "TCP_NOTSENT_LOWAT",
    )
    .map(|v| v as u32)
}

/// Turn keepalive on: first probe after `idle_s` idle seconds, then every `interval_s`,
/// connection dropped after `count` unanswered probes.
pub fn set_keepalive(fd: BorrowedFd<'_>, idle_s: u32, interval_s: u32, count: u32) -> Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE", 1)?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPIDLE,
        "TCP_KEEPIDLE",
        clamp_int(idle_s.into()),
    )?;
    let interval = clamp_int(interval_s.into());
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPINTVL,
        "TCP_KEEPINTVL",
        interval,
    )?;
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        "TCP_KEEPCNT",
        clamp_int(count.into()),
    )
}

/// Keepalive settings as read back: `(enabled, idle_s, interval_s, count)`.
pub fn keepalive(fd: BorrowedFd<'_>) -> Result<(bool, u32, u32, u32)> {
    Ok((
        get_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE")? != 0,
        get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE")? as u32,
        get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL")? as u32,
        get_int(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT")? as u32,
    ))
}

/// `TCP_USER_TIMEOUT`: drop the connection when sent data stays unacknowledged for `ms`
/// milliseconds (0 = system default).
pub fn set_user_timeout(fd: BorrowedFd<'_>, ms: u32) -> Result<()> {
    set_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        "TCP_USER_TIMEOUT",
        clamp_int(ms.into()),
    )
}

/// Read back `TCP_USER_TIMEOUT` in milliseconds.
pub fn user_timeout(fd: BorrowedFd<'_>) -> Result<u32> {
    get_int(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        "TCP_USER_TIMEOUT",
    )
    .map(|v| v as u32)
}

/// The part of the kernel's `struct tcp_info` drl uses. Fields the running kernel does not
/// fill (older than 4.6 for `delivery_rate`, 4.1 for `bytes_received`) read as 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    /// TCP state (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u32,
    /// Round-trip time variance, microseconds.
    pub rttvar_us: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Sender maximum segment size, bytes.
    pub snd_mss: u32,
    /// Retransmitted segments over the connection's life.
    pub total_retrans: u32,
    /// Bytes acknowledged by the peer.
    pub bytes_acked: u64,
    /// Bytes received from the peer.
    pub bytes_received: u64,
    /// Bytes in the send buffer not yet sent.
    pub notsent_bytes: u32,
    /// Minimum RTT seen, microseconds.
    pub min_rtt_us: u32,
    /// Most recent delivery rate estimate, bytes per second.
    pub delivery_rate: u64,
}

/// Kernel `struct tcp_info` (include/uapi/linux/tcp.h) up to `tcpi_delivery_rate` (Linux 4.9
/// layout). The two bit-field bytes are kept as raw bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawTcpInfo {
    state: u8,
    ca_state: u8,
    retransmits: u8,
    probes: u8,
    backoff: u8,
    options: u8,
    wscale: u8,
    app_limited_bits: u8,
    rto: u32,
    ato: u32,
    snd_mss: u32,
    rcv_mss: u32,
    unacked: u32,
    sacked: u32,
    lost: u32,
    retrans: u32,
    fackets: u32,
    last_data_sent: u32,
    last_ack_sent: u32,
    last_data_recv: u32,
    last_ack_recv: u32,
    pmtu: u32,
    rcv_ssthresh: u32,
    rtt: u32,
    rttvar: u32,
    snd_ssthresh: u32,
    snd_cwnd: u32,
    advmss: u32,
    reordering: u32,
    rcv_rtt: u32,
    rcv_space: u32,
    total_retrans: u32,
    pacing_rate: u64,
    max_pacing_rate: u64,
    bytes_acked: u64,
    bytes_received: u64,
    segs_out: u32,
    segs_in: u32,
    notsent_bytes: u32,
    min_rtt: u32,
    data_segs_in: u32,
    data_segs_out: u32,
    delivery_rate: u64,
}

// The layout must match the kernel's offsets.
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, rto) == 8);
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, total_retrans) == 100);
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, pacing_rate) == 104);
const _: () = assert!(std::mem::offset_of!(RawTcpInfo, delivery_rate) == 160);
const _: () = assert!(size_of::<RawTcpInfo>() == 168);

/// `TCP_INFO` of a TCP socket.
pub fn tcp_info(fd: BorrowedFd<'_>) -> Result<TcpInfo> {
    let mut raw = MaybeUninit::<RawTcpInfo>::zeroed();
    let mut len = size_of::<RawTcpInfo>() as libc::socklen_t;
    // SAFETY: raw is a live, zeroed buffer of `len` bytes; the kernel writes at most `len`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            raw.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(SockoptError::Get {
            option: "TCP_INFO",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: all-zero is a valid RawTcpInfo (integers only) and the kernel wrote integers into
    // a prefix of it; the rest stays zero.
    let raw = unsafe { raw.assume_init() };
    Ok(TcpInfo {
        state: raw.state,
        rtt_us: raw.rtt,
        rttvar_us: raw.rttvar,
        snd_cwnd: raw.snd_cwnd,
        snd_mss: raw.snd_mss,
        total_retrans: raw.total_retrans,
        bytes_acked: raw.bytes_acked,
        bytes_received: raw.bytes_received,
        notsent_bytes: raw.notsent_bytes,
        min_rtt_us: raw.min_rtt,
        delivery_rate: raw.delivery_rate,
    })
}

#[cfg(test)]
mod tests;
