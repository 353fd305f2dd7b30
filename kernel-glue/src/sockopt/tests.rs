//! Socket option tests on real TCP loopback connections, read back with getsockopt.

use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;

fn pair(addr: &str) -> Option<(TcpStream, TcpStream)> {
    let l = TcpListener::bind(addr).ok()?;
    let c = TcpStream::connect(l.local_addr().ok()?).ok()?;
    let (s, _) = l.accept().ok()?;
    Some((c, s))
}

#[test]
fn priority_round_trips() {
    let (c, _s) = pair("127.0.0.1:0").unwrap();
    set_priority(c.as_fd(), 5).unwrap();
    assert_eq!(priority(c.as_fd()).unwrap(), 5);
    set_priority(c.as_fd(), 0).unwrap();
    assert_eq!(priority(c.as_fd()).unwrap(), 0);
}

#[test]
fn tos_round_trips_on_v4_and_v6() {
    let (c, _s) = pair("127.0.0.1:0").unwrap();
    set_tos(c.as_fd(), 0xb8).unwrap(); // DSCP EF (46 << 2)
    assert_eq!(tos(c.as_fd()).unwrap(), 0xb8);
    // TCP: the ECN bits belong to the kernel.
    set_tos(c.as_fd(), 0x28 | 0x3).unwrap();
    assert_eq!(tos(c.as_fd()).unwrap() & 0xfc, 0x28);
    let Some((c6, _s6)) = pair("[::1]:0") else {
        return eprintln!("skipped v6 part: no ::1");
    };
    set_tos(c6.as_fd(), 0x48).unwrap(); // AF21
    assert_eq!(tos(c6.as_fd()).unwrap(), 0x48);
    let ip_tos = get_int(c6.as_fd(), libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS").unwrap();
    assert_eq!(ip_tos & 0xfc, 0x48, "IP_TOS also set for v4-mapped traffic");
}

#[test]
fn notsent_lowat_round_trips() {
    let (c, _s) = pair("127.0.0.1:0").unwrap();
    set_notsent_lowat(c.as_fd(), 128 * 1024).unwrap();
    assert_eq!(notsent_lowat(c.as_fd()).unwrap(), 128 * 1024);
}

#[test]
fn keepalive_round_trips() {
    let (c, _s) = pair("127.0.0.1:0").unwrap();
    assert!(!keepalive(c.as_fd()).unwrap().0);
    set_keepalive(c.as_fd(), 7, 3, 4).unwrap();
    assert_eq!(keepalive(c.as_fd()).unwrap(), (true, 7, 3, 4));
    // The kernel refuses an idle time of 0; the error names the option and value.
    let e = set_keepalive(c.as_fd(), 0, 3, 4).unwrap_err();
    assert!(
        e.to_string().starts_with("setsockopt TCP_KEEPIDLE=0:"),
        "{e}"
    );
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn user_timeout_round_trips() {
    let (c, _s) = pair("127.0.0.1:0").unwrap();
    set_user_timeout(c.as_fd(), 30_000).unwrap();
    assert_eq!(user_timeout(c.as_fd()).unwrap(), 30_000);
}

#[test]
fn tcp_info_counts_bytes_both_ways() {
    let (mut c, mut s) = pair("127.0.0.1:0").unwrap();
    let data = vec![0x42u8; 100_000];
    c.write_all(&data).unwrap();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    s.write_all(b"ok").unwrap();
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).unwrap(); // the ack for our data has arrived by now
    let ci = tcp_info(c.as_fd()).unwrap();
    let si = tcp_info(s.as_fd()).unwrap();
    assert_eq!(ci.state, 1, "ESTABLISHED");
    assert_eq!(ci.bytes_acked, 100_000 + 1, "data + SYN: {ci:?}");
    assert_eq!(si.bytes_received, 100_000, "{si:?}");
    assert_eq!(ci.bytes_received, 2);
    assert!(ci.rtt_us > 0 && ci.snd_cwnd > 0 && ci.snd_mss > 0, "{ci:?}");
    assert!(ci.delivery_rate > 0, "{ci:?}");
    assert_eq!(ci.notsent_bytes, 0);
}

#[test]
fn tcp_info_on_a_non_tcp_socket_is_an_error_naming_the_option() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = tcp_info(a.as_fd()).unwrap_err();
    assert!(e.to_string().starts_with("getsockopt TCP_INFO:"), "{e}");
}
