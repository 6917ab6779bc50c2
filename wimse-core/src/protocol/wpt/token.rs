//! A WPT's header and claims read straight into typed, borrowing fields: no JSON tree, and no
//! allocation for a typical proof. As strict as the generic parser (`jose::json`): objects
//! only, duplicate member names refused at every level, bounded depth.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::jose::json::{MemberNames, NameSeed, StrictIgnore, StrictValue, strict_error};

/// A member that should be a string.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum Text<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    /// Present, but not a string.
    Other,
}

impl Text<'_> {
    pub(super) fn as_str(&self) -> Option<&str> {
        match self {
            Text::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A member that should be an unsigned integer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) enum Number {
    #[default]
    Absent,
    U64(u64),
    Other,
}

#[derive(Debug, Default)]
pub(super) struct Header<'a> {
    pub(super) typ: Text<'a>,
    pub(super) alg: Text<'a>,
    pub(super) crit: bool,
}

#[derive(Debug, Default)]
pub(super) struct Claims<'a> {
    pub(super) aud: Text<'a>,
    pub(super) exp: Number,
    pub(super) jti: Text<'a>,
    pub(super) wth: Text<'a>,
    pub(super) tth: Text<'a>,
    /// `oth` is rare and small: kept as a JSON value when present.
    pub(super) oth: Option<Value>,
}

pub(super) fn header(bytes: &[u8]) -> Result<Header<'_>> {
    read(bytes, HeaderVisitor)
}

pub(super) fn claims(bytes: &[u8]) -> Result<Claims<'_>> {
    read(bytes, ClaimsVisitor)
}

fn read<'de, V: Visitor<'de>>(bytes: &'de [u8], visitor: V) -> Result<V::Value> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = (&mut de).deserialize_map(visitor).map_err(|e| strict_error(&e))?;
    de.end().map_err(|_| Error::with_detail(ErrorKind::MalformedToken, "trailing data after JSON"))?;
    Ok(value)
}

fn duplicate<E: de::Error>(name: &str) -> E {
    E::custom(format!("duplicate member `{name}`"))
}

/// Sets a known member once; a second occurrence is a duplicate.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &str) -> std::result::Result<(), E> {
    if slot.replace(value).is_some() {
        return Err(duplicate(name));
    }
    Ok(())
}

struct HeaderVisitor;

impl<'de> Visitor<'de> for HeaderVisitor {
    type Value = Header<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JOSE header object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Header<'de>, A::Error> {
        let (mut typ, mut alg, mut crit) = (None, None, None);
        let mut others = MemberNames::default();
        while let Some(key) = map.next_key_seed(NameSeed)? {
            match key.as_ref() {
                "typ" => once(&mut typ, map.next_value_seed(TextSeed)?, "typ")?,
                "alg" => once(&mut alg, map.next_value_seed(TextSeed)?, "alg")?,
                "crit" => once(&mut crit, map.next_value_seed(StrictIgnore { depth: 1 })?, "crit")?,
                _ => {
                    others.insert(key)?;
                    map.next_value_seed(StrictIgnore { depth: 1 })?;
                }
            }
        }
        Ok(Header { typ: typ.unwrap_or_default(), alg: alg.unwrap_or_default(), crit: crit.is_some() })
    }
}

struct ClaimsVisitor;

impl<'de> Visitor<'de> for ClaimsVisitor {
    type Value = Claims<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Claims<'de>, A::Error> {
        let (mut aud, mut exp, mut jti, mut wth, mut tth, mut oth) = (None, None, None, None, None, None);
        let mut others = MemberNames::default();
        while let Some(key) = map.next_key_seed(NameSeed)? {
            match key.as_ref() {
                "aud" => once(&mut aud, map.next_value_seed(TextSeed)?, "aud")?,
                "exp" => once(&mut exp, map.next_value_seed(NumberSeed)?, "exp")?,
                "jti" => once(&mut jti, map.next_value_seed(TextSeed)?, "jti")?,
                "wth" => once(&mut wth, map.next_value_seed(TextSeed)?, "wth")?,
                "tth" => once(&mut tth, map.next_value_seed(TextSeed)?, "tth")?,
                "oth" => once(&mut oth, map.next_value_seed(StrictValue { depth: 1 })?, "oth")?,
                _ => {
                    others.insert(key)?;
                    map.next_value_seed(StrictIgnore { depth: 1 })?;
                }
            }
        }
        Ok(Claims {
            aud: aud.unwrap_or_default(),
            exp: exp.unwrap_or_default(),
            jti: jti.unwrap_or_default(),
            wth: wth.unwrap_or_default(),
            tth: tth.unwrap_or_default(),
            oth,
        })
    }
}

/// Reads any value as [`Text`], checking non-strings strictly.
struct TextSeed;

impl<'de> DeserializeSeed<'de> for TextSeed {
    type Value = Text<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Text<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

macro_rules! other_scalars {
    ($other:expr) => {
        fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok($other)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Self::Value, A::Error> {
            StrictIgnore { depth: 1 }.visit_seq(seq).map(|()| $other)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<Self::Value, A::Error> {
            StrictIgnore { depth: 1 }.visit_map(map).map(|()| $other)
        }
    };
}

impl<'de> Visitor<'de> for TextSeed {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(v)))
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Text<'de>, E> {
        Ok(Text::Other)
    }
    other_scalars!(Text::Other);
}

/// Reads any value as [`Number`], checking non-integers strictly.
struct NumberSeed;

impl<'de> DeserializeSeed<'de> for NumberSeed {
    type Value = Number;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Number, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NumberSeed {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Number, E> {
        Ok(Number::U64(v))
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Number, E> {
        Ok(Number::Other)
    }
    other_scalars!(Number::Other);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_fields_borrow_and_keep_the_generic_strictness() {
        let c = claims(br#"{"aud":"a","exp":5,"jti":"j\u0031","wth":"w","x":{"y":[1,{"z":2}]}}"#).unwrap();
        assert_eq!(c.aud, Text::Str(Cow::Borrowed("a")));
        assert!(matches!(c.aud, Text::Str(Cow::Borrowed(_))), "unescaped strings are borrowed");
        assert_eq!(c.jti.as_str(), Some("j1"));
        assert_eq!(c.exp, Number::U64(5));
        let odd = claims(br#"{"aud":["a"],"exp":-1,"jti":7,"oth":{"h":"v"}}"#).unwrap();
        assert_eq!((odd.aud, odd.exp, odd.jti), (Text::Other, Number::Other, Text::Other));
        assert!(odd.oth.is_some_and(|o| o["h"] == "v"));
        for dup in [
            &br#"{"exp":1,"exp":2}"#[..],
            br#"{"x":1,"x":2}"#,
            br#"{"x":{"y":1,"y":2}}"#,
            br#"{"oth":{"h":"a","h":"b"}}"#,
            br#"{"tth":"a","tth":"a"}"#,
        ] {
            let err = claims(dup).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::DuplicateJsonMember, "{}", String::from_utf8_lossy(dup));
        }
        for bad in [&b"[1]"[..], b"\"s\"", b"{", b"{} {}", b"\xff", b"{\"a\":1,}"] {
            assert_eq!(claims(bad).unwrap_err().kind(), &ErrorKind::MalformedToken);
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(claims(deep.as_bytes()).unwrap_err().kind(), &ErrorKind::MalformedToken);
        let h = header(br#"{"alg":"ES256","typ":"wpt+jwt","kid":"k","crit":["x"]}"#).unwrap();
        assert_eq!((h.alg.as_str(), h.typ.as_str(), h.crit), (Some("ES256"), Some("wpt+jwt"), true));
        assert_eq!(header(br#"{"typ":"a","typ":"a"}"#).unwrap_err().kind(), &ErrorKind::DuplicateJsonMember);
    }
}
