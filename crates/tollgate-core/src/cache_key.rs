//! The exact-cache key: a SHA-256 over the canonical form of a request.
//!
//! Canonical form: the request body as JSON with object keys sorted at every depth, numbers in
//! one spelling (`1`, `1.0` and `1e0` are the same), and the fields below removed because they
//! change how an answer is delivered or accounted, never what it says:
//!
//! | field | why it is left out |
//! |---|---|
//! | `stream`, `stream_options` | a streamed and a plain answer are the same tokens |
//! | `user`, `metadata`, `safety_identifier` | tracking labels |
//! | `store`, `prompt_cache_key`, `service_tier` | provider-side storage and routing hints |
//!
//! Every other field is kept, including ones this module does not know (a new sampling
//! parameter must never be silently dropped from the key: two requests that differ in it must
//! not share an answer). Absent and default-valued parameters are different keys on purpose:
//! defaults differ between providers.
//!
//! Optional prompt normalization ([`Normalization`]) trims, collapses whitespace and case-folds
//! the text of messages before hashing; it is off by default, since it can merge prompts whose
//! answers differ.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Fields that never change the content of an answer, and so are not part of the key.
pub const IGNORED_FIELDS: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "metadata",
    "safety_identifier",
    "store",
    "prompt_cache_key",
    "service_tier",
];

/// Version of the canonical form; part of the hash so a change of the rules never serves an
/// entry made under the old ones.
const CANONICAL_VERSION: &str = "tollgate-cache-key-v1";

/// Prompt normalization applied to message text before hashing. All off by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Normalization {
    /// Strip leading and trailing white space.
    pub trim: bool,
    /// Turn every run of white space into one space.
    pub collapse_whitespace: bool,
    /// Compare text case-insensitively (Unicode lower case).
    pub case_fold: bool,
}

/// Why a request has no cache key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheKeyError {
    /// The body is not a JSON object.
    #[error("the request body must be a JSON object")]
    NotAnObject,
    /// The body has no string `model`.
    #[error("the request has no `model` string")]
    MissingModel,
}

/// The exact-cache hash of a request body (lower-case hex SHA-256 of its canonical form).
pub fn request_hash(body: &Value, normalization: Normalization) -> Result<String, CacheKeyError> {
    let mut out = Vec::with_capacity(512);
    write_request(body, normalization, &mut out)?;
    let mut hasher = Sha256::new();
    hasher.update(CANONICAL_VERSION.as_bytes());
    hasher.update(b"\n");
    hasher.update(&out);
    Ok(hex::encode(hasher.finalize()))
}

/// Writes the canonical form of a request body into `out` (exposed for tests and debugging).
pub fn canonical_request(
    body: &Value,
    normalization: Normalization,
    out: &mut String,
) -> Result<(), CacheKeyError> {
    let mut bytes = Vec::new();
    write_request(body, normalization, &mut bytes)?;
    out.push_str(&String::from_utf8_lossy(&bytes));
    Ok(())
}

fn write_request(
    body: &Value,
    normalization: Normalization,
    out: &mut Vec<u8>,
) -> Result<(), CacheKeyError> {
    let Value::Object(map) = body else {
        return Err(CacheKeyError::NotAnObject);
    };
    if !map.get("model").is_some_and(Value::is_string) {
        return Err(CacheKeyError::MissingModel);
    }
    write_object(
        map,
        out,
        |key| !IGNORED_FIELDS.contains(&key),
        |key, value, out| {
            if normalization != Normalization::default()
                && (key == "messages" || key == "input" || key == "prompt")
            {
                write_canonical(&normalize_text(value, normalization), out);
            } else {
                write_canonical(value, out);
            }
        },
    );
    Ok(())
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(map, out, |_| true, |_, v, out| write_canonical(v, out)),
    }
}

/// Writes an object with its keys sorted, leaving out those `keep` refuses; `value` writes each
/// value.
fn write_object(
    map: &serde_json::Map<String, Value>,
    out: &mut Vec<u8>,
    keep: impl Fn(&str) -> bool,
    value: impl Fn(&str, &Value, &mut Vec<u8>),
) {
    // Sorted here, whatever order the map keeps (serde_json's `preserve_order`, which any
    // crate of the build may turn on, keeps insertion order).
    let mut entries: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| keep(k)).collect();
    if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
        entries.sort_by(|a, b| a.0.cmp(b.0));
    }
    out.push(b'{');
    for (i, (key, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        value(key, v, out);
    }
    out.push(b'}');
}

/// Integers, and floats with no fractional part within f64's exact range, are written as
/// integers; other floats in Rust's shortest round-trip form.
fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    use std::io::Write;
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        if f.fract() == 0.0 && f.abs() < EXACT {
            let _ = write!(out, "{}", f as i64);
        } else {
            let _ = write!(out, "{f:?}");
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is deterministic; writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Applies [`Normalization`] to every string that is message text: string contents and the
/// `text` of content parts, at any depth of `messages` / `input` / `prompt`.
fn normalize_text(value: &Value, n: Normalization) -> Value {
    match value {
        Value::String(s) => Value::String(normalize_str(s, n)),
        Value::Array(items) => Value::Array(items.iter().map(|v| normalize_text(v, n)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if k == "content" || k == "text" {
                        normalize_text(v, n)
                    } else {
                        v.clone()
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn normalize_str(s: &str, n: Normalization) -> String {
    let mut text = if n.collapse_whitespace {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        s.to_owned()
    };
    if n.trim && !n.collapse_whitespace {
        text = text.trim().to_owned();
    }
    if n.case_fold {
        text = text.to_lowercase();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hash(v: Value) -> String {
        request_hash(&v, Normalization::default()).unwrap()
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let a = json!({"model": "m", "temperature": 1, "messages": [{"role": "user", "content": "hi"}]});
        let b: Value = serde_json::from_str(
            r#"{"messages":[{"content":"hi","role":"user"}],"temperature":1.0,"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(hash(a), hash(b));
    }

    #[test]
    fn every_output_parameter_changes_the_key() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let base_hash = hash(base.clone());
        for (field, value) in [
            ("temperature", json!(0.5)),
            ("top_p", json!(0.9)),
            ("max_tokens", json!(10)),
            ("seed", json!(7)),
            ("n", json!(2)),
            ("stop", json!(["x"])),
            (
                "tools",
                json!([{"type": "function", "function": {"name": "f"}}]),
            ),
            ("response_format", json!({"type": "json_object"})),
            ("logit_bias", json!({"50256": -100})),
            ("a_parameter_from_the_future", json!(true)),
        ] {
            let mut v = base.clone();
            v[field] = value;
            assert_ne!(hash(v), base_hash, "{field} must be part of the key");
        }
        let mut other_model = base.clone();
        other_model["model"] = json!("m2");
        assert_ne!(hash(other_model), base_hash);
    }

    #[test]
    fn delivery_fields_do_not_change_the_key() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let mut v = base.clone();
        v["stream"] = json!(true);
        v["stream_options"] = json!({"include_usage": true});
        v["user"] = json!("u1");
        v["metadata"] = json!({"a": "b"});
        assert_eq!(hash(v), hash(base));
    }

    #[test]
    fn normalization_is_off_by_default_and_merges_when_on() {
        let a =
            json!({"model": "m", "messages": [{"role": "user", "content": "  Hello   World "}]});
        let b = json!({"model": "m", "messages": [{"role": "user", "content": "hello world"}]});
        assert_ne!(hash(a.clone()), hash(b.clone()));
        let n = Normalization {
            trim: true,
            collapse_whitespace: true,
            case_fold: true,
        };
        assert_eq!(request_hash(&a, n).unwrap(), request_hash(&b, n).unwrap());
    }

    /// The canonical form is what every stored entry's key was made from: a change to it must
    /// come with a new [`CANONICAL_VERSION`], never by accident.
    #[test]
    fn the_canonical_form_is_pinned() {
        let body: Value = serde_json::from_str(
            r#"{"temperature":0.70,"model":"m","stream":true,"n":1.0,"seed":1e2,"user":"u",
                "messages":[{"role":"user","content":"h\u00e9 \"q\"\n\t<>&"},
                            {"content":[{"type":"text","text":"x"}],"role":"user"}],
                "tools":[{"type":"function","function":{"parameters":{"b":[1,2.5,-3],"a":null},"name":"f"}}],
                "logit_bias":{"50256":-100},"top_p":1e-3,"big":18446744073709551615}"#,
        )
        .unwrap();
        let mut out = String::new();
        canonical_request(&body, Normalization::default(), &mut out).unwrap();
        assert_eq!(out, PINNED);
        assert_eq!(hash(body), PINNED_HASH);
    }

    const PINNED: &str = r#"{"big":18446744073709551615,"logit_bias":{"50256":-100},"messages":[{"content":"hé \"q\"\n\t<>&","role":"user"},{"content":[{"text":"x","type":"text"}],"role":"user"}],"model":"m","n":1,"seed":100,"temperature":0.7,"tools":[{"function":{"name":"f","parameters":{"a":null,"b":[1,2.5,-3]}},"type":"function"}],"top_p":0.001}"#;
    const PINNED_HASH: &str = "a75e7acc8feb480d55c34aa2f7de1dbb20be543f962bb84546a31a42ed3a6e43";

    #[test]
    fn rejects_bodies_without_a_model() {
        assert_eq!(
            request_hash(&json!([1]), Normalization::default()),
            Err(CacheKeyError::NotAnObject)
        );
        assert_eq!(
            request_hash(&json!({"messages": []}), Normalization::default()),
            Err(CacheKeyError::MissingModel)
        );
    }
}
