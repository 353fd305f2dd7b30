//! The control socket against real Unix-socket clients: the behaviour the issue asks for
//! ("malformed JSON, unknown methods, oversized lines and slow clients get JSON-RPC errors or
//! a closed connection, and the daemon keeps serving") and the JSON-RPC 2.0 error codes
//! (JSON-RPC 2.0 specification, section 5.1).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drl::control::{
    code, Client, ControlError, ControlServer, Event, EventBus, EventFilter, EventKind, ObjectKind,
    Received, Router, RpcError, ServerOptions,
};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

struct TestServer {
    _dir: tempfile::TempDir,
    path: PathBuf,
    events: EventBus,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ControlError>>,
}

fn router() -> Router {
    let mut router = Router::new();
    router
        .method("status", |params| async move {
            Ok(json!({"state": "ok", "params": params}))
        })
        .method("panic", |_| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Value::Null)
        })
        .method("refuse", |_| async move {
            Err(RpcError::state_refused("r0 is Primary; demote it first"))
        })
        .method("big", |_| async move { Ok(json!("x".repeat(1024 * 1024))) });
    router
}

fn start(options: ServerOptions, events: EventBus) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run/drl/control.sock");
    let server =
        ControlServer::bind_with(&path, 0o600, router(), events.clone(), options).expect("bind");
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(server.run(stopped));
    TestServer {
        _dir: dir,
        path,
        events,
        stop,
        task,
    }
}

fn start_default() -> TestServer {
    start(ServerOptions::default(), EventBus::new())
}

/// A client that speaks raw lines, to send what `Client` never would.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    async fn connect(path: &Path) -> Raw {
        let (reader, writer) = UnixStream::connect(path)
            .await
            .expect("connect")
            .into_split();
        Raw {
            reader: BufReader::new(reader),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("send");
    }

    /// The next JSON line, or `None` when the server closed the connection.
    async fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("server answers in time")
        {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("server sends JSON")),
            // The server closing with our unread bytes queued resets the connection.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read failed: {e}"),
        }
    }
}

fn error_code(reply: &Value) -> Option<i64> {
    reply.pointer("/error/code").and_then(Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_round_trips_and_methods_lists_builtins() {
    let s = start_default();
    let mut client = Client::connect(&s.path).await.expect("connect");
    let result = client
        .call("status", json!({"resource": "r0"}))
        .await
        .expect("status");
    assert_eq!(result, json!({"state": "ok", "params": {"resource": "r0"}}));
    let methods = client.call("methods", Value::Null).await.expect("methods");
    assert_eq!(
        methods,
        json!([
            "big",
            "events.subscribe",
            "methods",
            "panic",
            "refuse",
            "status"
        ])
    );
    let refused = client
        .call("refuse", Value::Null)
        .await
        .expect_err("refused");
    assert_eq!(
        refused.rpc_error().map(|e| e.code),
        Some(code::STATE_REFUSED)
    );
    assert!(refused.to_string().contains("demote it first"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_gets_32601_and_the_connection_goes_on() {
    let s = start_default();
    let mut client = Client::connect(&s.path).await.expect("connect");
    let err = client
        .call("no.such.method", Value::Null)
        .await
        .expect_err("unknown");
    assert_eq!(
        err.rpc_error().map(|e| e.code),
        Some(code::METHOD_NOT_FOUND)
    );
    assert!(client.call("status", Value::Null).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_gets_32700_and_the_next_line_is_served() {
    let s = start_default();
    let mut raw = Raw::connect(&s.path).await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\n")
        .await;
    let reply = raw.recv().await.expect("an error reply");
    assert_eq!(error_code(&reply), Some(-32700));
    assert_eq!(reply["id"], Value::Null);
    raw.send(b"[1,2]\n").await;
    assert_eq!(
        error_code(&raw.recv().await.expect("reply")),
        Some(-32600),
        "batches are refused"
    );
    // A notification (no id) gets no reply: the next reply is for id 2.
    raw.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"status\"}\n")
        .await;
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"status\"}\n")
        .await;
    let reply = raw.recv().await.expect("reply");
    assert_eq!(reply["id"], json!(2));
    assert_eq!(reply["result"]["state"], json!("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_gets_an_error_and_a_close() {
    let s = start_default();
    let mut raw = Raw::connect(&s.path).await;
    let mut line = vec![b'a'; drl::limits::CONTROL_LINE_BYTES_MAX + 10];
    line.push(b'\n');
    raw.send(&line).await;
    let reply = raw.recv().await.expect("an error reply");
    assert_eq!(error_code(&reply), Some(-32600));
    assert!(reply
        .pointer("/error/message")
        .and_then(Value::as_str)
        .is_some_and(|m| m.contains("longer")));
    assert_eq!(raw.recv().await, None, "then the server closes");
    // And it keeps serving others.
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(client.call("status", Value::Null).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_above_the_limit_are_refused_and_the_first_ones_still_work() {
    let s = start_default();
    let max = drl::limits::CONTROL_CONNECTIONS_MAX;
    let mut clients = Vec::new();
    for _ in 0..max {
        let mut client = Client::connect(&s.path).await.expect("connect");
        client.call("status", Value::Null).await.expect("served");
        clients.push(client);
    }
    for _ in max..70 {
        // Over the limit only a read-only call is served (a reserved slot): anything else
        // gets one busy line, then the connection closes.
        let mut raw = Raw::connect(&s.path).await;
        raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"big\"}\n")
            .await;
        let reply = raw.recv().await.expect("one error line");
        assert_eq!(error_code(&reply), Some(i64::from(code::BUSY)));
        assert_eq!(raw.recv().await, None, "then closed");
    }
    for client in &mut clients {
        client
            .call("status", Value::Null)
            .await
            .expect("the first ones still work");
    }
    // Closing one frees its slot.
    drop(clients.pop());
    let freed = async {
        loop {
            let mut client = Client::connect(&s.path).await.expect("connect");
            if client.call("status", Value::Null).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, freed).await.expect("a slot frees up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_replies_is_dropped() {
    let options = ServerOptions {
        write_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let s = start(options, EventBus::new());
    let mut slow = Raw::connect(&s.path).await;
    // Eight 1 MiB replies: far more than a Unix socket buffers.
    for id in 0..8 {
        slow.send(format!("{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"big\"}}\n").as_bytes())
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Whatever was written before the deadline, then the end (a reply may be cut short).
    let mut received = Vec::new();
    let read = timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut slow.reader, &mut received),
    )
    .await;
    match read.expect("the server closes in time") {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("read failed: {e}"),
    }
    let replies = received.iter().filter(|&&b| b == b'\n').count();
    assert!(
        replies < 8,
        "the server gave up before writing all replies ({replies} arrived)"
    );
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(
        client.call("status", Value::Null).await.is_ok(),
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_does_not_read_is_dropped_without_blocking_the_publisher() {
    let options = ServerOptions {
        write_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let s = start(options, EventBus::with_capacity(64));
    let mut stuck = Raw::connect(&s.path).await;
    stuck
        .send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"events.subscribe\"}\n")
        .await;
    let reply = stuck.recv().await.expect("subscribed");
    assert_eq!(reply["result"]["subscribed"], json!(true));
    let padding = "p".repeat(64 * 1024);
    let started = std::time::Instant::now();
    for seq in 0..200u64 {
        s.events.publish(
            Event::new(EventKind::Progress, ObjectKind::Job, "snap-1")
                .field("seq", seq)
                .field("pad", padding.as_str()),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "publishing never waits for subscribers"
    );
    // The server gives up on the subscriber after the write deadline and closes.
    let closed = async {
        while s.events.subscriber_count() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    timeout(WAIT, closed)
        .await
        .expect("the stuck subscriber is dropped");
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(
        client.call("status", Value::Null).await.is_ok(),
        "still serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_is_dropped_but_an_event_subscriber_is_not() {
    let options = ServerOptions {
        idle_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let s = start(options, EventBus::new());
    // From before the connect: the server's idle clock starts at its accept, which comes
    // after this (measured from after the subscribe below, a loaded host made the 300 ms
    // look like 250).
    let started = std::time::Instant::now();
    let mut idle = Raw::connect(&s.path).await;
    let mut subscriber = Client::connect(&s.path)
        .await
        .expect("connect")
        .subscribe(EventFilter::default())
        .await
        .expect("subscribe");
    // A partial line does not count as activity.
    idle.send(b"{\"jsonrpc\":").await;
    assert_eq!(idle.recv().await, None, "the idle client is disconnected");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.events.publish(
        Event::new(EventKind::Change, ObjectKind::Resource, "r0").field("role", "Primary"),
    );
    match timeout(WAIT, subscriber.next()).await.expect("in time") {
        Ok(Some(Received::Event(e))) => assert_eq!(e.fields["role"], json!("Primary")),
        other => panic!("the subscriber should still be connected, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_created_with_the_requested_mode() {
    let s = start_default();
    let mode = std::fs::metadata(&s.path)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("group.sock");
    let _server = ControlServer::bind(&path, 0o660, Router::new(), EventBus::new()).expect("bind");
    assert_eq!(
        std::fs::metadata(&path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777,
        0o660
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_stolen_a_stale_one_is_replaced_and_shutdown_removes_it() {
    let s = start_default();
    let second = ControlServer::bind(&s.path, 0o600, Router::new(), EventBus::new());
    match second {
        Err(ControlError::AlreadyListening { .. }) => {}
        other => panic!("expected AlreadyListening, got {:?}", other.err()),
    }
    let err = ControlServer::bind(&s.path, 0o600, Router::new(), EventBus::new())
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("another daemon is listening on")));
    // The first server is unharmed.
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(client.call("status", Value::Null).await.is_ok());
    drop(client);
    s.stop.send(true).expect("stop");
    timeout(WAIT, s.task)
        .await
        .expect("stops in time")
        .expect("no panic")
        .expect("clean exit");
    assert!(!s.path.exists(), "the socket file is removed on shutdown");

    // A dead daemon's socket (bound, never served) is replaced.
    let stale = s._dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale"));
    assert!(stale.exists());
    assert!(ControlServer::bind(&stale, 0o600, Router::new(), EventBus::new()).is_ok());
    // A regular file is not replaced.
    let file = s._dir.path().join("file.sock");
    std::fs::write(&file, b"data").expect("write");
    assert!(matches!(
        ControlServer::bind(&file, 0o600, Router::new(), EventBus::new()),
        Err(ControlError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read(&file).expect("still there"), b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_says_when_no_daemon_listens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.sock");
    let err = Client::connect(&path)
        .await
        .err()
        .expect("nobody there")
        .to_string();
    assert!(err.contains("cannot reach the drl daemon at"), "{err}");
    assert!(
        err.contains("missing.sock") && err.contains("is `drl daemon` running?"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_receive_matching_events_in_order() {
    let s = start_default();
    let filter = EventFilter {
        resource: Some("r0".into()),
    };
    let stream = Client::connect(&s.path)
        .await
        .expect("connect")
        .subscribe(filter)
        .await
        .expect("subscribe");
    let mut stream = Box::pin(stream.into_stream());
    for seq in 0..50u64 {
        s.events
            .publish(Event::new(EventKind::Change, ObjectKind::Resource, "r1").field("seq", seq));
        s.events.publish(
            Event::new(EventKind::Progress, ObjectKind::PeerDevice, "r0").field("seq", seq),
        );
    }
    for seq in 0..50u64 {
        match timeout(WAIT, stream.next()).await.expect("in time") {
            Some(Ok(Received::Event(e))) => {
                assert_eq!(e.name, "r0", "the filter keeps other resources out");
                assert_eq!(e.kind, EventKind::Progress);
                assert_eq!(e.object, ObjectKind::PeerDevice);
                assert_eq!(e.fields["seq"], json!(seq), "in publication order");
            }
            other => panic!("expected event {seq}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscriber_is_told_how_many_events_it_lost() {
    let s = start(ServerOptions::default(), EventBus::with_capacity(8));
    let mut stream = Client::connect(&s.path)
        .await
        .expect("connect")
        .subscribe(EventFilter::default())
        .await
        .expect("subscribe");
    let published = 5_000u64;
    let padding = "p".repeat(512);
    // The publisher never blocks, even though nobody reads yet and the socket fills up.
    let started = std::time::Instant::now();
    for seq in 0..published {
        s.events.publish(
            Event::new(EventKind::Change, ObjectKind::Device, "r0")
                .field("seq", seq)
                .field("pad", padding.as_str()),
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "publishing did not block"
    );
    let (mut received, mut lost, mut notices, mut last_seq) = (0u64, 0u64, 0u64, None::<u64>);
    while received + lost < published {
        match timeout(WAIT, stream.next()).await.expect("in time") {
            Ok(Some(Received::Event(e))) => {
                let seq = e.fields["seq"].as_u64().expect("seq");
                assert!(
                    last_seq.is_none_or(|last| seq > last),
                    "order kept: {seq} after {last_seq:?}"
                );
                last_seq = Some(seq);
                received += 1;
            }
            Ok(Some(Received::Lost(n))) => {
                lost += n;
                notices += 1;
            }
            other => panic!("stream ended early: {other:?}"),
        }
    }
    assert!(
        notices >= 1 && lost > 0,
        "the subscriber lagged and was told ({lost} lost)"
    );
    assert_eq!(
        received + lost,
        published,
        "every event is either delivered or counted as lost"
    );
    assert_eq!(last_seq, Some(published - 1), "the newest event arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_32603_and_the_server_survives() {
    let s = start_default();
    let mut client = Client::connect(&s.path).await.expect("connect");
    let err = client
        .call("panic", Value::Null)
        .await
        .expect_err("internal error");
    assert_eq!(err.rpc_error().map(|e| e.code), Some(code::INTERNAL_ERROR));
    assert!(
        client.call("status", Value::Null).await.is_ok(),
        "same connection still works"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_do_not_crash_the_server() {
    let s = start_default();
    // A fixed xorshift sequence: binary, invalid UTF-8, NULs and newlines.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    for _ in 0..3 {
        let Raw { reader, mut writer } = Raw::connect(&s.path).await;
        let mut raw = Raw {
            reader,
            writer: UnixStream::pair().expect("pair").0.into_split().1,
        };
        let bytes = garbage.clone();
        // Send while reading the replies; the server may close mid-send (a long line).
        tokio::spawn(async move {
            let _ = writer.write_all(&bytes).await;
            let _ = writer.shutdown().await;
        });
        let mut replies = 0;
        while let Some(reply) = raw.recv().await {
            assert!(
                error_code(&reply).is_some(),
                "garbage only ever gets errors: {reply}"
            );
            replies += 1;
            if replies > 10_000 {
                break;
            }
        }
    }
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(
        client.call("status", Value::Null).await.is_ok(),
        "still serving"
    );
    assert!(!s.task.is_finished());
}

/// Issue 12: idle clients holding every ordinary slot must not lock the admin out: `status`
/// gets through a reserved slot (and only a read-only call does), and a reserved client that
/// sends nothing is told so and dropped quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_gets_through_when_idle_clients_hold_every_slot() {
    let s = start_default();
    let max = drl::limits::CONTROL_CONNECTIONS_MAX;
    let mut idle = Vec::new();
    for _ in 0..max {
        let mut client = Client::connect(&s.path).await.expect("connect");
        client.call("status", Value::Null).await.expect("served");
        idle.push(client);
    }
    for _ in 0..3 {
        let mut admin = Client::connect(&s.path).await.expect("connect");
        let r = admin
            .call("status", Value::Null)
            .await
            .expect("the admin's status gets through a reserved slot");
        assert_eq!(r["state"], "ok");
    }
    let mut silent = Raw::connect(&s.path).await;
    let reply = silent
        .recv()
        .await
        .expect("a busy line after the reserved idle time");
    assert_eq!(error_code(&reply), Some(i64::from(code::BUSY)));
    assert_eq!(silent.recv().await, None, "then closed");
    drop(idle);
}

/// Issue 12: a request line far over the limit (10 MiB unterminated, or 1 MiB of JSON) gets
/// the same JSON-RPC error as one just over it, although the client is still writing it when
/// the server decides; then the connection closes and the server serves others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_request_lines_get_the_json_rpc_error_too() {
    let s = start_default();
    let json_line = {
        let mut l = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\",\"params\":\"{}\"}}",
            "x".repeat(1 << 20)
        )
        .into_bytes();
        l.push(b'\n');
        l
    };
    for (what, line, eof) in [
        ("10 MiB unterminated", vec![b'a'; 10 << 20], true),
        ("1 MiB of JSON", json_line, false),
    ] {
        let mut raw = Raw::connect(&s.path).await;
        let sent = timeout(WAIT, raw.writer.write_all(&line)).await;
        assert!(
            matches!(sent, Ok(Ok(()))),
            "{what}: the server stopped reading before the line was written: {sent:?}"
        );
        if eof {
            raw.writer.shutdown().await.unwrap();
        }
        let reply = raw
            .recv()
            .await
            .unwrap_or_else(|| panic!("{what}: no JSON-RPC error before the close"));
        assert_eq!(error_code(&reply), Some(-32600), "{what}: {reply}");
        assert_eq!(raw.recv().await, None, "{what}: then the server closes");
    }
    let mut client = Client::connect(&s.path).await.expect("connect");
    assert!(client.call("status", Value::Null).await.is_ok());
}
