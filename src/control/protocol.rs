//! The control protocol: one JSON object per line each way. Requests carry `cmd` and, for
//! node verbs, `path`; replies carry `ok` and either the result or `error`.

use serde::{Deserialize, Serialize};

use crate::diff::ReloadSummary;
use crate::report::StopRecord;
use crate::status::{DaemonState, NodeStatus};

/// Longest request line accepted; longer ones get an error reply and the connection closes.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Start { path: String },
    Stop { path: String },
    Restart { path: String },
    Reload,
    Shutdown,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Config errors of a rejected reload, one per line as `check` prints them.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `status`: every node in tree order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeStatus>>,
    /// `status`: the daemon itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon: Option<DaemonInfo>,
    /// `stop`/`restart`: what was stopped, how long it took, deadline met or killed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Vec<StopRecord>>,
    /// `reload`: what changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<ReloadSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub version: String,
    pub config: String,
    pub uptime_ms: u64,
    pub state: DaemonState,
    /// `cgroup` or `process_groups` (SPEC §3 "Ownership").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ownership: Option<crate::process::owned::Mode>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }

    pub fn message(message: impl Into<String>) -> Response {
        Response {
            ok: true,
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

/// Parses one request line; the error is what the client is told.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("empty request".into());
    }
    let Object(object) = serde_json::from_str(line).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("bad request: {e}"),
        _ => format!("bad request: not JSON: {e}"),
    })?;
    // serde ignores unknown fields of unit variants even with deny_unknown_fields.
    if let Some(k) = object.keys().find(|k| *k != "cmd" && *k != "path") {
        return Err(format!("bad request: unknown field `{k}`"));
    }
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|e| format!("bad request: {e}"))
}

/// A request's JSON object, read with its keys checked to be distinct: serde_json would keep
/// the last of duplicates, and `{"cmd":"status","cmd":"shutdown"}` must not be read as
/// whichever came last.
struct Object(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Object;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"an object such as {"cmd":"status"}"#)
            }
            fn visit_map<A>(self, mut map: A) -> Result<Object, A::Error>
            where
                A: serde::de::MapAccess<'de>,
            {
                let mut object = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.contains_key(&key) {
                        let message = format!("duplicate field `{key}`");
                        return Err(serde::de::Error::custom(message));
                    }
                    object.insert(key, value);
                }
                Ok(Object(object))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_verb() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(r#"{"cmd":"stop","path":"backend/api#1"}"#),
            Ok(Request::Stop {
                path: "backend/api#1".into()
            })
        );
        assert_eq!(parse_request(r#" {"cmd":"reload"} "#), Ok(Request::Reload));
    }

    #[test]
    fn rejects_malformed_and_unknown_requests() {
        for bad in [
            "",
            "nonsense",
            "{}",
            r#"{"cmd":"explode"}"#,
            r#"{"cmd":"stop"}"#,
            r#"{"cmd":"status","extra":1}"#,
            r#"{"cmd":"status","cmd":"shutdown"}"#,
            r#"{"cmd":"stop","path":"a","path":"b"}"#,
            "[1,2]",
            "7",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
