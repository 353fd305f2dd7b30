//! A TCP man-in-the-middle for the replication link: forwards every connection it accepts to a
//! fixed target, and on demand flips one byte of the stream, cuts every live connection, or
//! refuses new ones. Used to corrupt frames between two real daemons and to cut the link at a
//! chosen moment without killing either daemon.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Ctl {
    /// Flip one byte once a direction of a connection has carried this many bytes after arming.
    flip_after: Mutex<Option<u64>>,
    flip_armed: AtomicBool,
    flips: AtomicU64,
    /// New connections are closed at once (and after a flip, the proxy blocks by itself).
    blocked: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU64,
    forwarded_bytes: AtomicU64,
    /// Hold each piece read for this long before forwarding it (a slow link's latency).
    delay_ms: AtomicU64,
    live: Mutex<Vec<TcpStream>>,
    /// Everything forwarded (both directions, interleaved) while recording, up to 256 MiB.
    record: Mutex<Option<Vec<u8>>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub target: SocketAddr,
    ctl: Arc<Ctl>,
}

impl Proxy {
    /// Listen on 127.0.0.1 (any free port) and forward to `target`.
    pub fn start(target: SocketAddr) -> Proxy {
        Self::start_on("127.0.0.1:0".parse().unwrap(), target)
    }

    pub fn start_on(listen: SocketAddr, target: SocketAddr) -> Proxy {
        let l = TcpListener::bind(listen).unwrap_or_else(|e| panic!("proxy bind {listen}: {e}"));
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let ctl = Arc::new(Ctl::default());
        let c = ctl.clone();
        std::thread::spawn(move || accept_loop(l, target, c));
        Proxy { addr, target, ctl }
    }

    /// Flip one byte (xor 0x5a) of whichever direction first carries `after` more bytes from
    /// now; then cut that connection's peer-visible stream as it is (the receiver must notice)
    /// and block new connections until [`Proxy::unblock`].
    pub fn arm_flip(&self, after: u64) {
        *self.ctl.flip_after.lock().unwrap() = Some(after);
        self.ctl.flip_armed.store(true, Ordering::SeqCst);
    }

    pub fn flips(&self) -> u64 {
        self.ctl.flips.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::SeqCst)
    }

    pub fn forwarded_bytes(&self) -> u64 {
        self.ctl.forwarded_bytes.load(Ordering::SeqCst)
    }

    /// Hold everything forwarded from now on for `d` before passing it on (both directions;
    /// each read is held in turn, so this also slows the link).
    pub fn set_delay(&self, d: Duration) {
        self.ctl
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Keep a copy of every byte forwarded from now on (what a capture on the wire would see).
    pub fn start_recording(&self) {
        *self.ctl.record.lock().unwrap() = Some(Vec::new());
    }

    /// The bytes recorded since [`Proxy::start_recording`]; recording stops.
    pub fn take_recording(&self) -> Vec<u8> {
        self.ctl.record.lock().unwrap().take().unwrap_or_default()
    }

    pub fn block(&self) {
        self.ctl.blocked.store(true, Ordering::SeqCst);
    }

    pub fn unblock(&self) {
        self.ctl.blocked.store(false, Ordering::SeqCst);
    }

    /// Close every live connection (both sides see the TCP connection end) and block new ones.
    pub fn cut(&self) {
        self.block();
        for s in self.ctl.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.ctl.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(l: TcpListener, target: SocketAddr, ctl: Arc<Ctl>) {
    while !ctl.stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((client, _)) => {
                ctl.accepted.fetch_add(1, Ordering::SeqCst);
                if ctl.blocked.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                    continue;
                };
                // Nothing listening on the target yet can give a connection joined to itself
                // (TCP simultaneous open): it would echo the client's bytes back and hold the
                // port the target is about to listen on. Drop it; the client retries.
                if server.local_addr().ok() == server.peer_addr().ok() {
                    continue;
                }
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = ctl.live.lock().unwrap();
                    live.retain(|s| s.peer_addr().is_ok());
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let c = ctl.clone();
                    std::thread::spawn(move || pump(from, to, c));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, ctl: Arc<Ctl>) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes this direction carried since the flip was armed (reset when armed later).
    let mut since_arm: u64 = 0;
    let mut was_armed = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let armed = ctl.flip_armed.load(Ordering::SeqCst);
        if armed && !was_armed {
            since_arm = 0;
        }
        was_armed = armed;
        if armed {
            let after = ctl.flip_after.lock().unwrap().unwrap_or(0);
            if since_arm + n as u64 > after {
                let at = after.saturating_sub(since_arm) as usize;
                if ctl
                    .flip_armed
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    buf[at.min(n - 1)] ^= 0x5a;
                    ctl.flips.fetch_add(1, Ordering::SeqCst);
                    ctl.blocked.store(true, Ordering::SeqCst);
                }
            }
            since_arm += n as u64;
        }
        let delay = ctl.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(r) = ctl.record.lock().unwrap().as_mut() {
            if r.len() < 256 << 20 {
                r.extend_from_slice(&buf[..n]);
            }
        }
        ctl.forwarded_bytes.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
