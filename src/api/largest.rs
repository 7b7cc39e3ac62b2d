//! Tests only: the largest object a CRD's schema admits, built by walking the schema the Rust
//! types generate, so that a bound missing anywhere (a new field included) fails a test.
//!
//! What the walk puts in the object:
//! - a string: `maxLength` characters (`a`s); an enum: its longest value;
//! - an integer: the widest of its `minimum` and `maximum` (or of its format's range); a boolean:
//!   `false`;
//! - an array: `maxItems` copies of its largest item;
//! - a map (`additionalProperties`): `maxProperties` entries, each key as long as the map's CEL
//!   rule allows (`self.all(k, ... size(k) <= N ...)`: structural schemas have no
//!   `propertyNames`, so the rule is the only bound on keys) and each value its largest;
//! - an object: every property, required or not, except that of two properties a rule
//!   `has(self.a) != has(self.b)` makes exclusive (exactly one of them), only the larger is
//!   present (when a property is in two such rules, both rules are ignored).
//!
//! Over-approximations (each only makes the measured object larger than any the API server
//! admits): other CEL rules are ignored, so fields that a rule of another shape forbids together
//! (two schedules, ...) are all present; patterns are ignored, so a 12-digit account ID counts
//! its `maxLength` whatever the pattern (and with no `maxLength` it is reported unbounded, even
//! though the pattern bounds it); the items of a set or map list are copies of one item
//! (distinct items of the same length exist for every list here but enum sets, which hold fewer
//! distinct values than `maxItems` copies).
//!
//! Under-approximation, for the measure to mean what it says: every character counts one byte.
//! A character outside ASCII takes up to 4 bytes in UTF-8 and a control character 6 in JSON
//! (`\u0001`), so the largest object in bytes is at most 6 times the measure (strings are the
//! only part that grows). Outside the schema: `metadata` (labels, annotations, managedFields)
//! is bounded by the API server itself, not by these types; the walk puts in a name and a
//! namespace of the longest lengths and nothing else.

use serde_json::{Map, Value, json};

/// The largest object `crd`'s first version admits, and the path of every string, array or map
/// its schema leaves unbounded (empty when the object is truly the largest).
pub(crate) struct Largest {
    pub object: Value,
    pub unbounded: Vec<String>,
}

impl Largest {
    /// Its JSON serialisation's length in bytes.
    pub fn bytes(&self) -> usize {
        serde_json::to_vec(&self.object).expect("serializes").len()
    }

    /// The bytes of each field down to `depth` levels, largest first (what to trim when the
    /// object grows too large); below a list, the fields of its first item.
    pub fn breakdown(&self, depth: usize) -> Vec<(usize, String)> {
        fn visit(v: &Value, path: &str, depth: usize, out: &mut Vec<(usize, String)>) {
            let v = match v {
                Value::Array(items) => items.first().unwrap_or(v),
                _ => v,
            };
            if let (Value::Object(fields), true) = (v, depth > 0) {
                for (name, field) in fields {
                    let path = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    out.push((field.to_string().len(), path.clone()));
                    visit(field, &path, depth - 1, out);
                }
            }
        }
        let mut out = Vec::new();
        visit(&self.object, "", depth, &mut out);
        out.sort_by(|a, b| b.cmp(a));
        out
    }
}

/// Longest name and namespace the API server accepts (DNS subdomain, DNS label).
const NAME_MAX: usize = 253;
const NAMESPACE_MAX: usize = 63;

pub(crate) fn largest(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Largest {
    let crd = serde_json::to_value(crd).expect("CRD serializes");
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut unbounded = Vec::new();
    let mut object = Map::new();
    for (name, prop) in schema["properties"].as_object().expect("root properties") {
        // apiVersion and kind must be the CRD's own; metadata is the API server's.
        let v = match name.as_str() {
            "apiVersion" => json!(format!(
                "{}/{}",
                crd["spec"]["group"].as_str().unwrap(),
                version["name"].as_str().unwrap()
            )),
            "kind" => crd["spec"]["names"]["kind"].clone(),
            "metadata" => json!({"name": "a".repeat(NAME_MAX), "namespace": "a".repeat(NAMESPACE_MAX)}),
            _ => walk(prop, name, &mut unbounded),
        };
        object.insert(name.clone(), v);
    }
    Largest {
        object: Value::Object(object),
        unbounded,
    }
}

fn walk(schema: &Value, path: &str, unbounded: &mut Vec<String>) -> Value {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .max_by_key(|v| v.to_string().len())
            .cloned()
            .unwrap_or(Value::Null);
    }
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true)) {
        unbounded.push(format!("{path}: x-kubernetes-preserve-unknown-fields (any content)"));
    }
    let max = |key: &str| schema.get(key).and_then(Value::as_u64).map(|n| n as usize);
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => match max("maxLength") {
            Some(n) => json!("a".repeat(n)),
            None => {
                unbounded.push(format!("{path}: a string without maxLength"));
                json!("")
            }
        },
        Some("integer") => widest_integer(schema),
        Some("number") => json!(-f64::MAX),
        Some("boolean") => json!(false),
        Some("array") => {
            let item = walk(&schema["items"], &format!("{path}[]"), unbounded);
            match max("maxItems") {
                Some(n) => Value::Array(vec![item; n]),
                None => {
                    unbounded.push(format!("{path}: an array without maxItems"));
                    Value::Array(vec![item])
                }
            }
        }
        Some("object") => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    out.insert(name.clone(), walk(prop, &format!("{path}.{name}"), unbounded));
                }
            }
            for (a, b) in exclusive_pairs(schema) {
                let size = |name: &str| out.get(name).map(|v| v.to_string().len() + name.len());
                if let (Some(sa), Some(sb)) = (size(&a), size(&b)) {
                    out.remove(if sa < sb { &a } else { &b });
                }
            }
            if let Some(values) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                let value = walk(values, &format!("{path}[]"), unbounded);
                let key_max = key_bound(schema);
                if key_max.is_none() {
                    unbounded.push(format!(
                        "{path}: a map without a CEL rule bounding its keys (self.all(k, size(k) <= N))"
                    ));
                }
                let n = max("maxProperties").unwrap_or_else(|| {
                    unbounded.push(format!("{path}: a map without maxProperties"));
                    1
                });
                let key_max = key_max.unwrap_or(1);
                for i in 0..n {
                    // Distinct keys, each of the longest length.
                    let suffix = i.to_string();
                    let key = format!("{}{suffix}", "a".repeat(key_max.saturating_sub(suffix.len())));
                    out.insert(key, value.clone());
                }
            }
            Value::Object(out)
        }
        other => {
            unbounded.push(format!("{path}: type {other:?} the walk does not know"));
            Value::Null
        }
    }
}

/// The integer with the longest JSON form within the schema's minimum and maximum (or its
/// format's range).
fn widest_integer(schema: &Value) -> Value {
    let (lo, hi) = match schema.get("format").and_then(Value::as_str) {
        Some("int32") => (i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => (i64::MIN, i64::MAX),
    };
    let lo = schema.get("minimum").and_then(Value::as_i64).unwrap_or(lo);
    let hi = schema.get("maximum").and_then(Value::as_i64).unwrap_or(hi);
    [lo, hi]
        .into_iter()
        .max_by_key(|n| n.to_string().len())
        .map(Value::from)
        .unwrap()
}

/// The pairs of properties that a rule `has(self.a) != has(self.b)` makes exclusive (exactly one
/// present), leaving out every pair whose property is in another such pair (with chains, keeping
/// the larger of each pair in turn could drop a combination the rules allow).
fn exclusive_pairs(schema: &Value) -> Vec<(String, String)> {
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else {
        return Vec::new();
    };
    let has = |s: &str| -> Option<String> {
        let name = s.trim().strip_prefix("has(self.")?.strip_suffix(')')?;
        name.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            .then(|| name.to_string())
    };
    let pairs: Vec<(String, String)> = rules
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .filter_map(|rule| {
            let (a, b) = rule.split_once("!=")?;
            Some((has(a)?, has(b)?))
        })
        .collect();
    let count = |n: &str| pairs.iter().filter(|(a, b)| a == n || b == n).count();
    pairs
        .iter()
        .filter(|(a, b)| count(a) == 1 && count(b) == 1)
        .cloned()
        .collect()
}

/// The longest key a map's CEL rules allow: N in a rule `self.all(k, ... size(k) <= N ...)`
/// (the smallest such N when several rules say it).
fn key_bound(schema: &Value) -> Option<usize> {
    let rules = schema.get("x-kubernetes-validations")?.as_array()?;
    rules
        .iter()
        .filter_map(|r| r["rule"].as_str())
        .filter_map(|rule| {
            let var = rule.strip_prefix("self.all(")?.split(',').next()?.trim();
            let bound = format!("size({var}) <= ");
            let at = rule.find(&bound)? + bound.len();
            let digits: String = rule[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn walked(schema: Value) -> (Value, Vec<String>) {
        let mut unbounded = Vec::new();
        let v = walk(&schema, "x", &mut unbounded);
        (v, unbounded)
    }

    #[test]
    fn strings_arrays_and_maps_take_their_bounds() {
        let schema = json!({"type": "object", "properties": {
            "s": {"type": "string", "maxLength": 3},
            "e": {"type": "string", "enum": ["A", "LONGEST", "MID"]},
            "l": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 1}},
            "m": {"type": "object", "maxProperties": 2, "additionalProperties": {"type": "string", "maxLength": 2},
                  "x-kubernetes-validations": [{"rule": "self.all(k, size(k) <= 4)"}]},
            "i": {"type": "integer", "minimum": 1, "maximum": 100},
            "b": {"type": "boolean"},
        }});
        let (v, unbounded) = walked(schema);
        assert!(unbounded.is_empty(), "{unbounded:?}");
        assert_eq!(
            v,
            json!({"s": "aaa", "e": "LONGEST", "l": ["a", "a"], "m": {"aaa0": "aa", "aaa1": "aa"}, "i": 100, "b": false})
        );
    }

    #[test]
    fn every_unbounded_string_array_and_map_is_named_by_its_path() {
        let schema = json!({"type": "object", "properties": {
            "s": {"type": "string"},
            "l": {"type": "array", "items": {"type": "object", "properties": {"t": {"type": "string", "format": "date-time"}}}},
            "m": {"type": "object", "maxProperties": 2, "additionalProperties": {"type": "string", "maxLength": 2}},
            "n": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 2},
                  "x-kubernetes-validations": [{"rule": "self.all(k, size(k) <= 4)"}]},
            "p": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        }});
        let (_, unbounded) = walked(schema);
        let mut paths: Vec<&str> = unbounded.iter().map(|u| u.split(':').next().unwrap()).collect();
        paths.sort();
        assert_eq!(paths, ["x.l", "x.l[].t", "x.m", "x.n", "x.p", "x.s"], "{unbounded:?}");
    }

    #[test]
    fn a_key_bound_is_read_from_the_rule_that_iterates_the_keys() {
        let bound = |rules: Value| key_bound(&json!({"x-kubernetes-validations": rules}));
        assert_eq!(
            bound(json!([{"rule": "self.all(key, size(key) <= 128 && size(self[key]) <= 256)"}])),
            Some(128)
        );
        assert_eq!(
            bound(json!([{"rule": "self.all(k, size(k) <= 9)"}, {"rule": "self.all(k, size(k) <= 7)"}])),
            Some(7)
        );
        // Bounding the values only, or another list, says nothing about the keys.
        assert_eq!(bound(json!([{"rule": "self.all(k, size(self[k]) <= 256)"}])), None);
        assert_eq!(bound(json!([{"rule": "size(self) <= 3"}])), None);
    }

    #[test]
    fn of_two_exclusive_properties_only_the_larger_is_present() {
        let s = |n: usize| json!({"type": "string", "maxLength": n});
        let rule = |r: &str| json!({"rule": r});
        let schema = json!({"type": "object",
        "properties": {"a": s(1), "b": s(5), "c": s(2), "d": s(1), "e": s(1), "f": s(1)},
        "x-kubernetes-validations": [
            rule("has(self.a) != has(self.b)"),
            // A chain: both rules are ignored.
            rule("has(self.c) != has(self.d)"),
            rule("has(self.d) != has(self.e)"),
            // Another shape: ignored.
            rule("has(self.f) == has(oldSelf.f)"),
        ]});
        let (v, unbounded) = walked(schema);
        assert!(unbounded.is_empty(), "{unbounded:?}");
        assert_eq!(v, json!({"b": "aaaaa", "c": "aa", "d": "a", "e": "a", "f": "a"}));
    }

    #[test]
    fn integers_take_their_widest_form() {
        assert_eq!(
            widest_integer(&json!({"format": "int64", "minimum": 0})),
            json!(i64::MAX)
        );
        assert_eq!(widest_integer(&json!({"format": "int32"})), json!(i32::MIN));
        assert_eq!(widest_integer(&json!({"minimum": 1, "maximum": 31})), json!(31));
    }

    /// Issue 19: the largest MacieJob the API server admits (spec and status, definition
    /// included) is under 256 KiB, counting a byte a character (at most 6 times that, 1.5 MiB,
    /// with every character JSON-escaped: still under etcd's default request limit).
    #[test]
    fn the_largest_maciejob_is_under_256_kib() {
        let largest = largest(&crate::api::MacieJob::crd());
        assert!(
            largest.unbounded.is_empty(),
            "unbounded in MacieJob:\n{}",
            largest.unbounded.join("\n")
        );
        let bytes = largest.bytes();
        let breakdown: Vec<String> = largest
            .breakdown(5)
            .iter()
            .take(25)
            .map(|(n, p)| format!("{n:>8} {p}"))
            .collect();
        eprintln!(
            "largest MacieJob: {bytes} bytes; largest fields:\n{}",
            breakdown.join("\n")
        );
        assert!(bytes < 256 * 1024, "the largest MacieJob takes {bytes} bytes");
    }

    /// MacieDiscovery holds up to 5,000 accounts (MAX_ACCOUNTS) in spec and status: its largest
    /// object, counting a byte a character, stays under etcd's default request limit (1.5 MiB).
    #[test]
    fn the_largest_maciediscovery_is_under_etcds_request_limit() {
        let largest = largest(&crate::api::MacieDiscovery::crd());
        let bytes = largest.bytes();
        let breakdown: Vec<String> = largest
            .breakdown(3)
            .iter()
            .take(25)
            .map(|(n, p)| format!("{n:>8} {p}"))
            .collect();
        eprintln!(
            "largest MacieDiscovery: {bytes} bytes; largest fields:\n{}",
            breakdown.join("\n")
        );
        assert!(
            largest.unbounded.is_empty(),
            "unbounded in MacieDiscovery:\n{}",
            largest.unbounded.join("\n")
        );
        assert!(bytes < 1536 * 1024, "the largest MacieDiscovery takes {bytes} bytes");
    }
}
