//! Site-failure detection on three real sites (issue 11): network namespaces for site a, site
//! b and a witness behind a router namespace, one Debian etcd member in each, the two drl
//! daemons of `r0` in sites a and b with `[detect]` (lease TTL 3 s). Faults are real: processes
//! killed, links down, silent nft drops. Every wait is on a status predicate or an event.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::detect::{
    events, first_event, is_lease, is_site, scope, site_health, unix_ms, wait_for, Bed,
};
use common::nbd_client::NbdClient;
use common::pair::{in_sync, random_bytes, res, EventsTap, WAIT};
use common::wait_until;
use common::writer::{Model, Writer};

const TTL_S: u64 = 3;
const MIB: u64 = 1 << 20;

fn role(n: &common::Node) -> Option<String> {
    res(n, "r0").and_then(|r| r["role"].as_str().map(str::to_owned))
}

/// Site A dies (every process in its namespace killed, its link down): B suspects it, takes
/// the lease once A's has expired in etcd (B and the witness are a majority), and promotes.
#[test]
fn site_a_dies_b_suspects_takes_the_lease_and_promotes() {
    let bed = Bed::up("fo");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let data = random_bytes(11, MIB);
    common::nbd_client::nbd_write(&bed.d().join("a/r0.nbd"), 0, &data);
    wait_until("the write reached B", WAIT, || {
        res(&a, "r0").is_some_and(|r| in_sync(&r))
    });
    let tap = EventsTap::start(&b);
    let t0 = unix_ms();
    bed.sh(&["kill-site", "a"]);
    wait_for("B promoted, and its events read", &[&a, &b], || {
        role(&b).as_deref() == Some("Primary") && tap.contains("\"promoted\"")
    });
    let evs = events(&tap.text());
    let (sus, _) = first_event(&evs, |e| is_site(e, "site-a", "suspected"))
        .unwrap_or_else(|| panic!("no suspicion event:\n{}", tap.text()));
    let (took, _) = first_event(&evs, |e| is_lease(e, "takeover")).expect("takeover event");
    let (prom, _) = first_event(&evs, |e| is_lease(e, "promoted")).expect("promoted event");
    println!(
        "site kill at 0 ms: suspected at {} ms, lease taken at {} ms, promoted at {} ms (TTL {TTL_S} s)",
        sus - t0,
        took - t0,
        prom - t0
    );
    assert!(
        sus < took && took <= prom,
        "suspicion, then the lease, then the promotion"
    );
    // A renewed at most a third of the TTL before it died; etcd expires the lease a TTL after
    // that renewal, so the key cannot move before 2/3 of the TTL.
    assert!(
        took - t0 >= TTL_S * 1000 * 2 / 3,
        "the lease moved {} ms after the kill: before A's lease could have expired",
        took - t0
    );
    assert!(sus - t0 < 2_000, "suspicion took {} ms", sus - t0);
    let mut c = NbdClient::connect(&bed.d().join("b/r0.nbd")).unwrap();
    assert!(!c.read_only(), "B's export is writable after the promotion");
    assert_eq!(
        c.read(0, MIB as u32).unwrap(),
        data,
        "B serves A's acknowledged data"
    );
    drop(a);
}

/// Only the A–B link is cut; both still reach the witness. B suspects A, but the key stays with
/// A (its lease keeps being renewed through the witness's member): no promotion, A keeps
/// serving writes, replication resumes after the cut heals. Then the witness alone goes away,
/// then answers slowly: A and B are still a majority, A keeps its lease.
/// Wait until A, still Primary with its fence open, renewed its lease for two TTLs after
/// `since` (unix ms): the witness's state (`how`) did not cost A its authority.
fn renewed_for_two_ttls(a: &common::Node, b: &common::Node, how: &str, since: u64) {
    wait_for(
        &format!("A renewed its lease for two TTLs {how}"),
        &[a, b],
        || {
            scope(a, "r0").is_some_and(|s| {
                s["held_by_me"] == true
                    && s["fence_open"] == true
                    && s["renewed_unix_ms"].as_u64().unwrap_or(0) > since + 2 * TTL_S * 1000
            })
        },
    );
}

#[test]
fn a_cut_between_the_sites_alone_moves_nothing() {
    let bed = Bed::up("cut");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let tap = EventsTap::start(&b);
    let t_cut = unix_ms();
    bed.sh(&["cut", "a-b"]);
    wait_for("B suspects site-a", &[&a, &b], || {
        site_health(&b, "site-a").is_some_and(|h| h != "alive")
    });
    // Two full TTLs of renewals by A after the cut: B had every chance to take the key.
    wait_for(
        "A renewed its lease for two TTLs after the cut",
        &[&a, &b],
        || {
            scope(&a, "r0").is_some_and(|s| {
                s["held_by_me"] == true
                    && s["renewed_unix_ms"].as_u64().unwrap_or(0) > t_cut + 2 * TTL_S * 1000
            })
        },
    );
    assert_eq!(role(&b).as_deref(), Some("Secondary"), "B must not promote");
    assert_eq!(role(&a).as_deref(), Some("Primary"));
    let sb = scope(&b, "r0").unwrap();
    assert_eq!(sb["holder"], "site-a", "B sees A holding the key: {sb}");
    let evs = events(&tap.text());
    assert!(
        first_event(&evs, |e| is_lease(e, "takeover") || is_lease(e, "promoted")).is_none(),
        "no takeover while the witness sees A:\n{}",
        tap.text()
    );
    // A still acknowledges writes (not fenced), while B cannot receive them.
    let data = random_bytes(12, MIB);
    common::nbd_client::nbd_write(&bed.d().join("a/r0.nbd"), 2 * MIB, &data);
    bed.sh(&["heal", "a-b"]);
    wait_for("replication resumed and in sync", &[&a, &b], || {
        res(&a, "r0").is_some_and(|r| in_sync(&r)) && res(&b, "r0").is_some_and(|r| in_sync(&r))
    });
    assert_eq!(
        common::pair::file_bytes(&bed.d().join("b/r0.img"), 2 * MIB, MIB),
        data,
        "the write made during the cut reached B after the heal"
    );
    // The witness alone goes away.
    let t_w = unix_ms();
    bed.sh(&["isolate", "w"]);
    renewed_for_two_ttls(&a, &b, "without the witness", t_w);
    assert_eq!(role(&b).as_deref(), Some("Secondary"));
    assert_eq!(role(&a).as_deref(), Some("Primary"));
    // The witness comes back, but answers slowly (its link shaped to 16 kbit/s).
    bed.sh(&["heal"]);
    bed.sh(&["slow", "w", "16kbit"]);
    let t_s = unix_ms();
    renewed_for_two_ttls(&a, &b, "with a slow witness", t_s);
    assert_eq!(role(&b).as_deref(), Some("Secondary"));
    assert_eq!(role(&a).as_deref(), Some("Primary"));
    let evs = events(&tap.text());
    assert!(
        first_event(&evs, |e| is_lease(e, "takeover") || is_lease(e, "promoted")).is_none(),
        "no takeover without the witness or with a slow one:\n{}",
        tap.text()
    );
}

/// A is isolated from B and from the witness while a writer writes through NBD, timestamping
/// every acknowledged write. A cannot renew its lease and fences itself before the lease can
/// expire; B takes the key and promotes. No write was acknowledged at A after B's promotion
/// instant. After the heal A finds the key at B, becomes Secondary (Outdated) and resyncs from
/// B as after a fail back.
#[test]
fn an_isolated_primary_acknowledges_no_write_after_the_backup_promotes() {
    let bed = Bed::up("iso");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let w = AckWriter::start(&bed.d().join("a/r0.nbd"), 0x5a, true);
    wait_until("the writer is writing", WAIT, || w.acks().len() > 20);
    let tap_b = EventsTap::start(&b);
    let tap_a = EventsTap::start(&a);
    let t_iso = unix_ms();
    bed.sh(&["isolate", "a"]);
    wait_for("B promoted", &[&a, &b], || {
        role(&b).as_deref() == Some("Primary")
    });
    let promoted_event =
        |e: &serde_json::Value| e["object"] == "resource" && e["fields"]["role"] == "Primary";
    wait_for("B's role change event", &[&a, &b], || {
        first_event(&events(&tap_b.text()), promoted_event).is_some()
    });
    let (promoted, _) = first_event(&events(&tap_b.text()), promoted_event).unwrap();
    // Heal: A learns the key is at B, is demoted, its held write fails, and it resyncs from B.
    bed.sh(&["heal"]);
    wait_for("A demoted and in sync with B as Primary", &[&a, &b], || {
        res(&a, "r0").is_some_and(|r| r["role"] == "Secondary" && in_sync(&r))
            && res(&b, "r0").is_some_and(|r| r["role"] == "Primary" && in_sync(&r))
    });
    let (n, acks) = w.stop();
    println!("the writer got {n} acknowledgements from A");
    // Every acknowledgement A ever gave, including any after the promotion until its demotion.
    let last_ack = *acks.last().unwrap();
    let late = acks.iter().filter(|&&t| t >= promoted).count();
    assert_eq!(
        late, 0,
        "{late} writes were acknowledged at A at or after B's promotion instant"
    );
    let fenced = first_event(&events(&tap_a.text()), |e| is_lease(e, "fenced"))
        .and_then(|(_, e)| e["fields"]["fenced_at_unix_ms"].as_u64());
    println!(
        "isolated at 0 ms: A fenced at {:?} ms, last write acknowledged at A at {} ms, B promoted at {} ms",
        fenced.map(|f| f as i64 - t_iso as i64),
        last_ack as i64 - t_iso as i64,
        promoted as i64 - t_iso as i64
    );
    let f = fenced.unwrap_or_else(|| panic!("A published no fenced event:\n{}", tap_a.text()));
    assert!(f < promoted, "A fenced itself before B promoted");
    let evs_a = events(&tap_a.text());
    assert!(
        first_event(&evs_a, |e| is_lease(e, "demoted")).is_some(),
        "A says why it was demoted:\n{}",
        tap_a.text()
    );
    common::pair::assert_files_identical(
        &bed.d().join("a/r0.img"),
        &bed.d().join("b/r0.img"),
        16 * MIB,
        "after the fail back resync",
    );
}

/// The A–B link flaps every 300 ms for 12 s: no promotion, A stays Primary, and once it stops
/// replication converges and B sees site-a alive.
#[test]
fn a_flapping_link_between_the_sites_promotes_nothing_and_converges() {
    let bed = Bed::up("flap");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let tap = EventsTap::start(&b);
    let flap = std::process::Command::new(common::detect::script())
        .env("DRL_DET_TAG", &bed.tag)
        .args(["flap", "a-b", "12", "300"])
        .status();
    assert!(flap.unwrap().success());
    bed.sh(&["heal"]);
    wait_for("converged: in sync, site-a alive at B", &[&a, &b], || {
        res(&a, "r0").is_some_and(|r| in_sync(&r))
            && res(&b, "r0").is_some_and(|r| in_sync(&r))
            && site_health(&b, "site-a").as_deref() == Some("alive")
    });
    assert_eq!(role(&a).as_deref(), Some("Primary"));
    assert_eq!(role(&b).as_deref(), Some("Secondary"));
    let evs = events(&tap.text());
    assert!(
        first_event(&evs, |e| is_lease(e, "takeover") || is_lease(e, "promoted")).is_none(),
        "no takeover while the link flaps:\n{}",
        tap.text()
    );
    let suspicions = evs
        .iter()
        .filter(|e| is_site(e, "site-a", "suspected"))
        .count();
    println!("B suspected site-a {suspicions} times during 12 s of flapping");
}

/// Bursts of total isolation of the Primary's site, each shorter than the lease (1.5 s of a
/// 3 s TTL), while a writer writes: the key never moves (0 false promotions); a burst that
/// outlasts the fence margin only holds A's writes (suspend-io) until the next renewal gets
/// through, and the writer goes on after the last burst; replication converges.
#[test]
fn isolation_bursts_shorter_than_the_lease_promote_nothing() {
    let bed = Bed::up("burst");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let tap = EventsTap::start(&b);
    let w = AckWriter::start(&bed.d().join("a/r0.nbd"), 0xa5, false);
    for _ in 0..5 {
        bed.sh(&["isolate", "a"]);
        let t = std::time::Instant::now();
        // The burst itself is the fault being injected, not a synchronisation.
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(t.elapsed()));
        bed.sh(&["heal"]);
        std::thread::sleep(Duration::from_millis(1500));
    }
    let t_end = unix_ms();
    wait_for(
        "A writes again after the bursts, in sync",
        &[&a, &b],
        || {
            w.acks().last().is_some_and(|&t| t > t_end)
                && res(&b, "r0").is_some_and(|r| in_sync(&r) && r["role"] == "Secondary")
        },
    );
    let (n, _) = w.stop();
    assert_eq!(role(&a).as_deref(), Some("Primary"));
    let evs = events(&tap.text());
    assert!(
        first_event(&evs, |e| is_lease(e, "takeover") || is_lease(e, "promoted")).is_none(),
        "a false promotion:\n{}",
        tap.text()
    );
    let s = scope(&a, "r0").unwrap();
    println!(
        "5 bursts of 1.5 s: {} writes acknowledged, {} held at A's fence, B suspected site-a {} times",
        n,
        s["fenced_writes"],
        evs.iter().filter(|e| is_site(e, "site-a", "suspected")).count()
    );
}

/// With `auto-promote = false` the backup takes the lease when site A dies but leaves the
/// promotion to the orchestrator: the `lease takeover` event with `held_by_me` is its signal,
/// and its `primary` then finds the key already held.
#[test]
fn without_auto_promote_the_backup_holds_the_lease_for_the_orchestrator() {
    let bed = Bed::up("orch");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "auto-promote = false");
    let tap = EventsTap::start(&b);
    bed.sh(&["kill-site", "a"]);
    wait_for("B holds the lease", &[&a, &b], || {
        tap.contains("\"takeover\"") && scope(&b, "r0").is_some_and(|s| s["held_by_me"] == true)
    });
    let e = first_event(&events(&tap.text()), |e| is_lease(e, "takeover"))
        .unwrap()
        .1;
    assert_eq!(e["name"], "r0");
    assert_eq!(e["fields"]["held_by_me"], true, "{e}");
    assert_eq!(
        role(&b).as_deref(),
        Some("Secondary"),
        "no promotion by detection"
    );
    let out = b.cli(&["primary", "r0", "--force"]);
    assert!(
        out.status.success(),
        "the orchestrator's promotion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(role(&b).as_deref(), Some("Primary"));
    assert_eq!(scope(&b, "r0").unwrap()["holder"], "site-b");
}

/// The soak, bounded: a CPU hog on every core, a writer at A, and bursts of dropped
/// packets shorter than the lease (a random share of everything to and from site a, all of it,
/// a random share between a and b, all of it; 0.6-1.5 s of a 3 s TTL, 1 s apart): 0 false
/// promotions (no takeover, promotion or demotion at either site), A stays Primary, the pair
/// converges and holds every acknowledged write. The long run is scripts/soak-detect.sh.
#[test]
fn loss_bursts_below_the_lease_beside_a_cpu_hog_promote_nothing() {
    let bed = Bed::up("soak");
    let (a, b) = bed.start_pair_primary_a(TTL_S, "");
    let (tap_a, tap_b) = (EventsTap::start(&a), EventsTap::start(&b));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<common::KillOnDrop> = (0..cores)
        .map(|_| {
            common::KillOnDrop(
                std::process::Command::new("yes")
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("spawn yes (the CPU hog)"),
            )
        })
        .collect();
    let w = Writer::start(&bed.d().join("a/r0.nbd"), 16 * MIB, Model::default());
    let bursts: [(&[&str], u64); 8] = [
        (&["loss", "a", "60"], 1500),
        (&["isolate", "a"], 1200),
        (&["loss", "a-b", "90"], 1500),
        (&["cut", "a-b"], 1500),
        (&["loss", "a", "85"], 1000),
        (&["isolate", "a"], 600),
        (&["loss", "a-b", "50"], 1500),
        (&["loss", "a", "95"], 1500),
    ];
    for (args, ms) in bursts {
        let t = std::time::Instant::now();
        bed.sh(args);
        // The burst and the calm after it are the fault being injected, not synchronisation.
        std::thread::sleep(Duration::from_millis(ms).saturating_sub(t.elapsed()));
        bed.sh(&["heal"]);
        std::thread::sleep(Duration::from_millis(1000));
    }
    let t_end = unix_ms();
    let acked_before = w.acked();
    wait_for("A writes again after the bursts", &[&a, &b], || {
        w.acked() > acked_before
    });
    let model = w.stop();
    drop(hogs);
    wait_for("converged after the bursts", &[&a, &b], || {
        res(&a, "r0").is_some_and(|r| in_sync(&r) && r["role"] == "Primary")
            && res(&b, "r0").is_some_and(|r| in_sync(&r) && r["role"] == "Secondary")
    });
    for (who, tap) in [("A", &tap_a), ("B", &tap_b)] {
        let evs = events(&tap.text());
        assert!(
            first_event(&evs, |e| {
                is_lease(e, "takeover") || is_lease(e, "promoted") || is_lease(e, "demoted")
            })
            .is_none(),
            "a false promotion seen at {who}:\n{}",
            tap.text()
        );
    }
    for n in ["a", "b"] {
        model.verify(
            &bed.d().join(format!("{n}/r0.img")),
            "after the loss bursts (acknowledged writes on both disks)",
        );
    }
    let evs = events(&tap_b.text());
    println!(
        "8 loss bursts beside {cores} CPU hogs (ended {t_end}): {} writes acknowledged, B suspected site-a {} times, A fenced {} times",
        model.next_seq,
        evs.iter().filter(|e| is_site(e, "site-a", "suspected")).count(),
        events(&tap_a.text())
            .iter()
            .filter(|e| is_lease(e, "fenced"))
            .count()
    );
}

/// A writer thread at A's export: 4 KiB blocks over the first 4 MiB, one in flight, the unix
/// time in ms of every acknowledgement recorded. `stop_at_error`: a failed write ends it
/// (`io-error`, a demoted A); otherwise a failed write fails the test (`suspend-io` holds
/// writes, never fails them).
struct AckWriter {
    acks: Arc<Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl AckWriter {
    fn start(sock: &std::path::Path, fill: u8, stop_at_error: bool) -> AckWriter {
        let acks: Arc<Mutex<Vec<u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (a, st, sock) = (acks.clone(), stop.clone(), sock.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut c = NbdClient::connect(&sock).unwrap();
            let block = vec![fill; 4096];
            let mut i = 0u64;
            while !st.load(Ordering::Relaxed) {
                match c.write((i % 1024) * 4096, &block) {
                    Err(_) if stop_at_error => return i,
                    r => r.expect("no write fails: suspend-io holds them"),
                }
                a.lock().unwrap().push(unix_ms());
                i += 1;
            }
            i
        });
        AckWriter { acks, stop, thread }
    }

    fn acks(&self) -> Vec<u64> {
        self.acks.lock().unwrap().clone()
    }

    /// Stop and join: the writes it made and every acknowledgement's time.
    fn stop(self) -> (u64, Vec<u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.thread.join().unwrap();
        let acks = self.acks.lock().unwrap().clone();
        (n, acks)
    }
}
