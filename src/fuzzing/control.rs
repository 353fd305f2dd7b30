//! Control-socket harnesses: the line framing and JSON-RPC parser, and the TCP endpoint's
//! challenge-response from both ends.
//!
//! `rpc`: bytes as a client sends them, read in arbitrary buffer sizes by the connection's
//! [`read_line_bounded`] (the real bound, [`CONTROL_LINE_BYTES_MAX`]); each line through
//! [`parse_request`] and, for the one method the connection handles itself, its params.
//! Checked: no panic; every error reply serializes to one JSON line that is a JSON-RPC 2.0
//! error carrying the request's id when it had a valid one; a request that parses keeps its
//! method and id.
//!
//! `tcp_auth`: the server's [`authenticate_with`] against an answer that is the right HMAC,
//! a wrong one, or arbitrary bytes; then the client's [`client_handshake`] against an
//! arbitrary server. Checked: the server accepts exactly the right HMAC; no panic.

use arbitrary::{Arbitrary, Unstructured};
use serde_json::Value;
use tokio::io::BufReader;

use super::Scripted;
use crate::control::connection::{read_line_bounded, LineRead};
use crate::control::events::EventFilter;
use crate::control::rpc::{self, parse_request};
use crate::control::tcp::{authenticate_with, client_handshake, Token};
use crate::limits::CONTROL_LINE_BYTES_MAX;

/// Request lines through the connection's framing and parser (see the module doc).
pub fn rpc(data: &[u8]) {
    let (cap, input) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c) + 1, rest),
        None => return,
    };
    super::block_on(async {
        let mut reader = BufReader::with_capacity(cap, input);
        let mut line = Vec::new();
        loop {
            let read = read_line_bounded(&mut reader, &mut line, CONTROL_LINE_BYTES_MAX)
                .await
                .expect("reading a slice does not fail");
            match read {
                LineRead::Eof | LineRead::TooLong => return,
                LineRead::Line => {
                    assert!(
                        line.len() <= CONTROL_LINE_BYTES_MAX,
                        "a line over the bound"
                    );
                    one_line(std::mem::take(&mut line).trim_ascii());
                }
            }
        }
    });
}

fn one_line(line: &[u8]) {
    if line.is_empty() {
        return;
    }
    let sent: Option<Value> = serde_json::from_slice(line).ok();
    let sent_id = sent
        .as_ref()
        .and_then(|v| v.get("id"))
        .filter(|id| matches!(id, Value::String(_) | Value::Number(_) | Value::Null));
    match parse_request(line) {
        Ok(request) => {
            let v = sent.expect("a request that parses is JSON");
            assert_eq!(
                v.get("method").and_then(Value::as_str),
                Some(request.method.as_str())
            );
            assert_eq!(v.get("id"), request.id.as_ref());
            if request.method == "events.subscribe" {
                let _ = rpc::params::<EventFilter>(request.params);
            }
        }
        Err(reply) => {
            let mut out = serde_json::to_vec(&*reply).expect("a reply serializes");
            assert!(!out.contains(&b'\n'), "a reply spans lines");
            out.push(b'\n');
            let v: Value = serde_json::from_slice(&out).expect("a reply is JSON");
            assert_eq!(v.get("jsonrpc").and_then(Value::as_str), Some("2.0"));
            let code = v.pointer("/error/code").and_then(Value::as_i64);
            assert!(code.is_some(), "an error reply without a code: {v}");
            // The id is echoed when the request had a valid one and was an object.
            if let (Some(id), true) = (sent_id, sent.as_ref().is_some_and(Value::is_object)) {
                assert_eq!(v.get("id"), Some(id), "the reply lost the request's id");
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Answer {
    Right,
    /// A JSON answer with this hmac string.
    Hmac(String),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Exchange {
    nonce: [u8; 32],
    answer: Answer,
    /// What an arbitrary server sends the client side.
    server: Vec<u8>,
}

const TOKEN: &[u8] = b"a token of at least 16 bytes";

/// Both ends of the TCP control authentication (see the module doc).
pub fn tcp_auth(data: &[u8]) {
    let Ok(ex) = Exchange::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let token = Token::from_bytes(TOKEN);
    let (line, right) = match &ex.answer {
        Answer::Right => (
            format!("{{\"hmac\":\"{}\"}}\n", token.answer(&ex.nonce)).into_bytes(),
            true,
        ),
        Answer::Hmac(h) => {
            let mut l =
                serde_json::to_vec(&serde_json::json!({ "hmac": h })).expect("a string serializes");
            l.push(b'\n');
            (l, *h == token.answer(&ex.nonce))
        }
        Answer::Raw(b) => (b.clone(), false),
    };
    let server = super::block_on(async {
        let mut io = Scripted::new(&line);
        let ok = authenticate_with(&mut io, &token, ex.nonce).await.is_ok();
        (ok, io.written)
    });
    let (accepted, said) = server;
    if !matches!(ex.answer, Answer::Raw(_)) {
        assert_eq!(accepted, right, "the server's verdict on the answer");
    } else if accepted {
        // Arbitrary bytes only pass if they carry the right answer.
        let want = token.answer(&ex.nonce);
        assert!(
            line.windows(want.len()).any(|w| w == want.as_bytes()),
            "accepted an answer without the right HMAC"
        );
    }
    assert!(said.starts_with(b"{"), "the challenge comes first");

    super::block_on(async {
        let mut io = Scripted::new(&ex.server);
        let _ = client_handshake(&mut io, &token, "fuzz").await;
    });
}
