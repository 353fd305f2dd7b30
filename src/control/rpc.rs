//! JSON-RPC 2.0 messages as the control socket speaks them: one JSON object per line.
//!
//! A request is validated here, before any handler sees it: `jsonrpc` must be `"2.0"`, `method`
//! a string, `params` (if present) an object or an array, `id` (if present) a string, a number
//! or null. A request without `id` is a notification: it runs, and gets no reply. Batch requests
//! (a JSON array) are refused with [`code::INVALID_REQUEST`]: the CLI and the orchestrator send
//! one request per line, and refusing batches keeps the work one line can cause bounded.
//!
//! Error codes are the standard ones (`-32700` .. `-32603`) plus drl's own in the
//! implementation-defined server range (`-32001` no such resource, `-32002` the current state
//! refused the change, `-32003` busy).

use std::fmt::Display;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The only protocol version spoken.
pub const JSONRPC_VERSION: &str = "2.0";

/// JSON-RPC error codes.
pub mod code {
    /// The line is not valid JSON.
    pub const PARSE_ERROR: i32 = -32700;
    /// Valid JSON, but not a valid request object (or a batch, which drl refuses).
    pub const INVALID_REQUEST: i32 = -32600;
    /// No handler is registered under that method name.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    /// The handler refused its parameters.
    pub const INVALID_PARAMS: i32 = -32602;
    /// The handler failed in a way that is drl's fault (including a panic).
    pub const INTERNAL_ERROR: i32 = -32603;
    /// The named resource (volume, connection, job, snapshot) does not exist.
    pub const NO_SUCH_RESOURCE: i32 = -32001;
    /// The resource exists but its current state does not allow the change.
    pub const STATE_REFUSED: i32 = -32002;
    /// The daemon or the resource is busy (too many connections, a job already running).
    pub const BUSY: i32 = -32003;
}

/// A JSON-RPC error object, as sent to clients and as returned by handlers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (JSON-RPC error {code})")]
pub struct RpcError {
    pub code: i32,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Attach structured detail (for example the state that refused a change).
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn parse_error(detail: impl Display) -> Self {
        Self::new(code::PARSE_ERROR, format!("parse error: {detail}"))
    }

    pub fn invalid_request(detail: impl Display) -> Self {
        Self::new(code::INVALID_REQUEST, format!("invalid request: {detail}"))
    }

    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            code::METHOD_NOT_FOUND,
            format!("method not found: {method:?} (call \"methods\" for the list)"),
        )
    }

    pub fn invalid_params(detail: impl Display) -> Self {
        Self::new(code::INVALID_PARAMS, format!("invalid params: {detail}"))
    }

    pub fn internal(detail: impl Display) -> Self {
        Self::new(code::INTERNAL_ERROR, format!("internal error: {detail}"))
    }

    pub fn no_such_resource(name: impl Display) -> Self {
        Self::new(code::NO_SUCH_RESOURCE, format!("no such resource: {name}"))
    }

    pub fn state_refused(detail: impl Display) -> Self {
        Self::new(code::STATE_REFUSED, detail.to_string())
    }

    pub fn busy(detail: impl Display) -> Self {
        Self::new(code::BUSY, detail.to_string())
    }
}

/// A request (or, without `id`, a notification) as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub jsonrpc: String,
    /// `None`: a notification (no reply). `Some(Value::Null)`: a request whose id is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub method: String,
    /// `Value::Null` when the request had no params.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

impl Request {
    pub fn new(id: impl Into<Value>, method: impl Into<String>, params: Value) -> Self {
        Request {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id: Some(id.into()),
            method: method.into(),
            params,
        }
    }
}

/// A reply: exactly one of `result` and `error` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub jsonrpc: String,
    pub id: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

impl Response {
    pub fn success(id: Value, result: Value) -> Self {
        Response {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id,
            result: Some(result),
            error: None,
        }
    }

    pub fn failure(id: Value, error: RpcError) -> Self {
        Response {
            jsonrpc: JSONRPC_VERSION.to_string(),
            id,
            result: None,
            error: Some(error),
        }
    }

    pub fn from_result(id: Value, result: Result<Value, RpcError>) -> Self {
        match result {
            Ok(value) => Self::success(id, value),
            Err(error) => Self::failure(id, error),
        }
    }

    /// The result, or the error the server sent. A reply with neither counts as a null result.
    pub fn into_result(self) -> Result<Value, RpcError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.result.unwrap_or(Value::Null)),
        }
    }
}

/// A server-to-client notification (events); never answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub jsonrpc: String,
    pub method: String,
    #[serde(default)]
    pub params: Value,
}

impl Notification {
    pub fn new(method: impl Into<String>, params: Value) -> Self {
        Notification {
            jsonrpc: JSONRPC_VERSION.to_string(),
            method: method.into(),
            params,
        }
    }
}

/// Parse and validate one request line. On failure, the error reply to send (its `id` is the
/// request's id when it could be read, null otherwise).
pub fn parse_request(line: &[u8]) -> Result<Request, Box<Response>> {
    let fail = |id: Value, err: RpcError| Box::new(Response::failure(id, err));
    let value: Value =
        serde_json::from_slice(line).map_err(|e| fail(Value::Null, RpcError::parse_error(e)))?;
    let mut object: Map<String, Value> = match value {
        Value::Object(object) => object,
        Value::Array(_) => {
            return Err(fail(
                Value::Null,
                RpcError::invalid_request(
                    "batch requests are not supported; send one request per line",
                ),
            ))
        }
        other => {
            return Err(fail(
                Value::Null,
                RpcError::invalid_request(format!(
                    "expected a JSON object, got {}",
                    json_type(&other)
                )),
            ))
        }
    };
    let id = object.remove("id");
    if let Some(id) = &id {
        if !matches!(id, Value::String(_) | Value::Number(_) | Value::Null) {
            return Err(fail(
                Value::Null,
                RpcError::invalid_request(format!(
                    "id must be a string, a number or null, got {}",
                    json_type(id)
                )),
            ));
        }
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    match object.get("jsonrpc") {
        Some(Value::String(v)) if v == JSONRPC_VERSION => {}
        other => {
            return Err(fail(
                reply_id,
                RpcError::invalid_request(format!("jsonrpc must be \"2.0\", got {}", shown(other))),
            ))
        }
    }
    let method = match object.remove("method") {
        Some(Value::String(method)) => method,
        other => {
            return Err(fail(
                reply_id,
                RpcError::invalid_request(format!(
                    "method must be a string, got {}",
                    shown(other.as_ref())
                )),
            ))
        }
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Value::Null,
        Some(p @ (Value::Object(_) | Value::Array(_))) => p,
        Some(other) => {
            return Err(fail(
                reply_id,
                RpcError::invalid_request(format!(
                    "params must be an object or an array, got {}",
                    json_type(&other)
                )),
            ))
        }
    };
    Ok(Request {
        jsonrpc: JSONRPC_VERSION.to_string(),
        id,
        method,
        params,
    })
}

/// Decode a handler's params into `T`. Absent params decode as an empty object, so a struct
/// whose fields are all optional accepts a request without params. Failures are
/// [`code::INVALID_PARAMS`] naming serde's reason.
pub fn params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = if params.is_null() {
        Value::Object(Map::new())
    } else {
        params
    };
    serde_json::from_value(params).map_err(RpcError::invalid_params)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shown(value: Option<&Value>) -> String {
    match value {
        None => "nothing".to_string(),
        Some(v @ Value::String(_)) => v.to_string(),
        Some(v) => json_type(v).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(line: &str) -> Response {
        *parse_request(line.as_bytes()).expect_err("must be refused")
    }

    #[test]
    fn a_valid_request_parses_with_its_id_and_params() {
        let req = parse_request(
            br#"{"jsonrpc":"2.0","id":7,"method":"status","params":{"resource":"r0"}}"#,
        )
        .expect("valid");
        assert_eq!(req.id, Some(json!(7)));
        assert_eq!(req.method, "status");
        assert_eq!(req.params, json!({"resource": "r0"}));
    }

    /// A reply carries the very id the client sent, floats included (found by fuzzing: the
    /// default float parser was one ULP off, so re-reading a reply gave another number).
    #[test]
    fn a_float_id_is_echoed_as_the_same_number() {
        let id = "444444444444444444444444";
        let line = format!(r#"{{"jsonrpc":"1.0","id":{id}}}"#);
        let reply = error_of(&line);
        let text = serde_json::to_string(&reply).expect("serializes");
        let back: Value = serde_json::from_str(&text).expect("JSON");
        let sent: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(back.get("id"), sent.get("id"));
    }

    #[test]
    fn a_missing_id_is_a_notification_and_a_null_id_is_not() {
        let n = parse_request(br#"{"jsonrpc":"2.0","method":"status"}"#).expect("valid");
        assert_eq!(n.id, None);
        let r = parse_request(br#"{"jsonrpc":"2.0","id":null,"method":"status"}"#).expect("valid");
        assert_eq!(r.id, Some(Value::Null));
    }

    #[test]
    fn malformed_and_invalid_requests_get_the_standard_codes() {
        let e = error_of("{not json");
        assert_eq!(e.error.as_ref().map(|e| e.code), Some(code::PARSE_ERROR));
        assert_eq!(e.id, Value::Null);
        let e = error_of(r#"[{"jsonrpc":"2.0","id":1,"method":"status"}]"#);
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
        assert!(e
            .error
            .as_ref()
            .is_some_and(|e| e.message.contains("batch")));
        let e = error_of(r#"{"jsonrpc":"1.0","id":"a","method":"status"}"#);
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
        assert_eq!(e.id, json!("a"), "the id is echoed when it could be read");
        let e = error_of(r#"{"jsonrpc":"2.0","id":1,"method":5}"#);
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
        let e = error_of(r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#);
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
        let e = error_of(r#"{"jsonrpc":"2.0","id":{"x":1},"method":"x"}"#);
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
        let e = error_of("42");
        assert_eq!(
            e.error.as_ref().map(|e| e.code),
            Some(code::INVALID_REQUEST)
        );
    }

    #[test]
    fn responses_serialize_with_exactly_one_of_result_and_error() {
        let ok = serde_json::to_value(Response::success(json!(1), Value::Null)).expect("serialize");
        assert_eq!(ok, json!({"jsonrpc":"2.0","id":1,"result":null}));
        let err = serde_json::to_value(Response::failure(
            json!(2),
            RpcError::method_not_found("nope"),
        ))
        .expect("serialize");
        assert_eq!(err["error"]["code"], json!(code::METHOD_NOT_FOUND));
        assert!(err.get("result").is_none());
    }

    #[test]
    fn params_decode_absent_as_empty_and_report_bad_types() {
        #[derive(Deserialize)]
        struct P {
            resource: Option<String>,
        }
        let p: P = params(Value::Null).expect("absent params are fine");
        assert_eq!(p.resource, None);
        let e = params::<P>(json!({"resource": 3}))
            .err()
            .expect("wrong type");
        assert_eq!(e.code, code::INVALID_PARAMS);
    }
}
