//! Strict JSON for token headers and payloads: objects only, duplicate member names refused.
//!
//! serde_json keeps the last of two equal member names, which lets a token say two things at
//! once (`{"sub":"a","sub":"b"}`) to two parsers. This visitor builds a `serde_json::Value` and
//! fails on the first repeat, at every nesting level.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};

/// Nesting deeper than this is refused (serde_json's own limit is 128; tokens need 3).
pub(crate) const MAX_DEPTH: usize = 16;

/// Parses `bytes` as a JSON object, refusing duplicate member names anywhere.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue { depth: 0 }.deserialize(&mut de).map_err(|e| strict_error(&e))?;
    de.end().map_err(|_| Error::with_detail(ErrorKind::MalformedToken, "trailing data after JSON"))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Error::with_detail(ErrorKind::MalformedToken, "not a JSON object")),
    }
}

const DUPLICATE: &str = "duplicate member";

pub(crate) struct StrictValue {
    pub(crate) depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map(Value::Number).unwrap_or(Value::Null))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue { depth })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue { depth })?;
            if out.contains_key(&key) {
                let shown: String = key.chars().take(32).collect();
                return Err(de::Error::custom(format!("{DUPLICATE} `{shown}`")));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Checks a JSON value without keeping it: duplicate member names are still refused at every
/// level, and depth is bounded. Allocates only for nested objects (to remember their names).
pub(crate) struct StrictIgnore {
    pub(crate) depth: usize,
}

impl<'de> DeserializeSeed<'de> for StrictIgnore {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictIgnore {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> std::result::Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        while seq.next_element_seed(StrictIgnore { depth })?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(de::Error::custom("nesting too deep"));
        }
        let mut names = MemberNames::default();
        while let Some(key) = map.next_key_seed(NameSeed)? {
            names.insert(key)?;
            map.next_value_seed(StrictIgnore { depth })?;
        }
        Ok(())
    }
}

/// Reads a member name, borrowing it from the input when it has no escapes (serde's own
/// `Cow<str>` always copies).
pub(crate) struct NameSeed;

impl<'de> DeserializeSeed<'de> for NameSeed {
    type Value = std::borrow::Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(v))
    }
}

/// The member names of one object seen so far, to refuse a repeat.
#[derive(Default)]
pub(crate) struct MemberNames<'de>(Vec<std::borrow::Cow<'de, str>>);

impl<'de> MemberNames<'de> {
    /// Records `name`, or fails if it was already seen.
    pub(crate) fn insert<E: de::Error>(&mut self, name: std::borrow::Cow<'de, str>) -> std::result::Result<(), E> {
        if self.0.contains(&name) {
            let shown: String = name.chars().take(32).collect();
            return Err(E::custom(format!("{DUPLICATE} `{shown}`")));
        }
        self.0.push(name);
        Ok(())
    }
}

/// Maps a strict-parsing error to the crate's error kinds.
pub(crate) fn strict_error(e: &serde_json::Error) -> Error {
    if e.to_string().starts_with(DUPLICATE) {
        Error::with_detail(ErrorKind::DuplicateJsonMember, e.to_string())
    } else {
        Error::with_detail(ErrorKind::MalformedToken, "not valid JSON")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        let e = parse_object(br#"{"a":1,"a":2}"#).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::DuplicateJsonMember);
        let e = parse_object(br#"{"cnf":{"jwk":{"x":"1","x":"2"}}}"#).unwrap_err();
        assert_eq!(e.kind(), &ErrorKind::DuplicateJsonMember);
    }

    #[test]
    fn non_objects_and_garbage_are_malformed() {
        for input in [&b"[1]"[..], b"\"s\"", b"{", b"{} {}", b"\xff"] {
            assert_eq!(parse_object(input).unwrap_err().kind(), &ErrorKind::MalformedToken);
        }
        let deep = format!("{}{}", "{\"a\":".repeat(40), "1".to_owned() + &"}".repeat(40));
        assert_eq!(parse_object(deep.as_bytes()).unwrap_err().kind(), &ErrorKind::MalformedToken);
    }

    #[test]
    fn objects_parse() {
        let m = parse_object(br#"{"a":[1,2.5,null,true],"b":{"c":"d"}}"#).unwrap();
        assert_eq!(m["b"]["c"], "d");
    }
}
