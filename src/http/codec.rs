//! What the generated JSON edge code calls: scalars from URL text and JSON values (proto3's JSON
//! mapping: either field-name spelling, numbers or strings for integers, enum names), and replies
//! written as the legacy API's JSON (proto field names, every field, `null` for unset messages,
//! 64-bit integers as strings, map keys in order, dates with milliseconds). Every problem is
//! reported against the field it concerns.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::io::Write;

use serde_json::Value as Json;

use crate::error::FieldViolation;

pub type JsonObject = serde_json::Map<String, Json>;

/// A request message filled from a URL and a JSON body (implemented by generated code).
pub trait FromHttp: Default {
    /// Binds one path variable or query parameter; `seen` catches repeats.
    fn set_param(&mut self, name: &str, text: &str, seen: &mut Seen) -> Result<(), FieldViolation>;
    /// Merges an object's members; `prefix` names the enclosing field in violations.
    fn merge_json(
        &mut self,
        object: JsonObject,
        prefix: &str,
        violations: &mut Vec<FieldViolation>,
    );
}

/// A reply written as legacy JSON (implemented by generated code for messages).
pub trait WriteJson {
    fn write_json(&self, out: &mut Vec<u8>);
}

/// The fields a URL has set, to refuse a second value for a field that holds one.
#[derive(Default)]
pub struct Seen(HashSet<&'static str>);

impl Seen {
    pub fn once(&mut self, field: &'static str, given_as: &str) -> Result<(), FieldViolation> {
        if self.0.insert(field) {
            Ok(())
        } else {
            Err(FieldViolation::new(given_as, "is given more than once"))
        }
    }
}

/// An enum's values: full name, short name, number.
pub struct EnumValues(pub &'static [(&'static str, &'static str, i32)]);

impl EnumValues {
    /// By full name (`SORT_NEWEST`), short name in any case (`newest`), or a defined number.
    fn number(&self, text: &str) -> Option<i32> {
        let values = self.0.iter();
        values
            .clone()
            .find(|(full, _, _)| *full == text)
            .or_else(|| {
                values
                    .clone()
                    .find(|(_, short, _)| short.eq_ignore_ascii_case(text))
            })
            .map(|v| v.2)
            .or_else(|| {
                let n: i32 = text.parse().ok()?;
                self.0.iter().any(|v| v.2 == n).then_some(n)
            })
    }
}

/// A value from text or JSON, with what it must be for the violation message.
pub trait Parse<T> {
    fn must_be(&self) -> &'static str;
    fn text(&self, text: &str) -> Option<T>;
    fn value(&self, json: Json) -> Option<T>;

    /// A path variable or query parameter.
    fn param(&self, name: &str, text: &str) -> Result<T, FieldViolation> {
        self.text(text)
            .ok_or_else(|| FieldViolation::new(name, format!("must be {}", self.must_be())))
    }

    /// A JSON value at `path`; a violation is recorded when it does not fit.
    fn json(&self, json: Json, path: &str, violations: &mut Vec<FieldViolation>) -> Option<T> {
        let parsed = self.value(json);
        if parsed.is_none() {
            violations.push(FieldViolation::new(
                path,
                format!("must be {}", self.must_be()),
            ));
        }
        parsed
    }
}

/// Integers, booleans and strings.
pub struct Plain(pub &'static str);

/// An enum's number.
pub struct Enum(pub &'static EnumValues, pub &'static str);

impl<T: Scalar> Parse<T> for Plain {
    fn must_be(&self) -> &'static str {
        self.0
    }

    fn text(&self, text: &str) -> Option<T> {
        T::from_text(text)
    }

    fn value(&self, json: Json) -> Option<T> {
        match json {
            Json::String(s) if !T::IS_STRING => T::from_text(&s),
            other => T::from_json(other),
        }
    }
}

impl Parse<i32> for Enum {
    fn must_be(&self) -> &'static str {
        self.1
    }

    fn text(&self, text: &str) -> Option<i32> {
        self.0.number(text)
    }

    fn value(&self, json: Json) -> Option<i32> {
        match json {
            Json::String(s) => self.0.number(&s),
            Json::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
            _ => None,
        }
    }
}

/// A 32-bit integer field marked `(reviews.v1.saturating)`: a well-formed integer beyond the
/// type's range is read as its nearest end (the service then clamps it to its own bound), so
/// `count=1000000000000` asks for the largest page rather than failing.
pub struct Saturating(pub &'static str);

impl Parse<i32> for Saturating {
    fn must_be(&self) -> &'static str {
        self.0
    }

    fn text(&self, text: &str) -> Option<i32> {
        if !integer_text(text) {
            return None;
        }
        Some(text.parse().unwrap_or(if text.starts_with('-') {
            i32::MIN
        } else {
            i32::MAX
        }))
    }

    fn value(&self, json: Json) -> Option<i32> {
        match json {
            Json::String(s) => self.text(&s),
            Json::Number(n) => {
                let whole = n
                    .as_i64()
                    .map(|i| i as f64)
                    .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0))?;
                Some(whole.clamp(i32::MIN as f64, i32::MAX as f64) as i32)
            }
            _ => None,
        }
    }
}

/// A scalar of a proto field.
pub trait Scalar: Sized {
    const IS_STRING: bool = false;
    fn from_text(text: &str) -> Option<Self>;
    fn from_json(json: Json) -> Option<Self>;
}

/// Integers may arrive as floats with no fraction (`5.0`), as proto3 JSON allows.
fn integer(json: &Json) -> Option<i64> {
    let n = json.as_number()?;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

/// Integer text as proto3 JSON writes it: an optional minus and digits, nothing else (Rust's
/// parser would also take a leading `+`).
fn integer_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn from_text(text: &str) -> Option<Self> {
                integer_text(text).then(|| text.parse().ok()).flatten()
            }

            fn from_json(json: Json) -> Option<Self> {
                integer(&json).and_then(|i| <$t>::try_from(i).ok())
            }
        }
    )*};
}
integers!(i32, i64, u32);

impl Scalar for u64 {
    fn from_text(text: &str) -> Option<Self> {
        integer_text(text).then(|| text.parse().ok()).flatten()
    }

    fn from_json(json: Json) -> Option<Self> {
        json.as_u64()
            .or_else(|| integer(&json).and_then(|i| u64::try_from(i).ok()))
    }
}

impl Scalar for bool {
    fn from_text(text: &str) -> Option<Self> {
        match text {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    fn from_json(json: Json) -> Option<Self> {
        json.as_bool()
    }
}

impl Scalar for String {
    const IS_STRING: bool = true;

    fn from_text(text: &str) -> Option<Self> {
        Some(text.to_string())
    }

    fn from_json(json: Json) -> Option<Self> {
        match json {
            Json::String(s) => Some(s),
            _ => None,
        }
    }
}

pub fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A repeated field from a JSON array.
pub fn json_list<T>(
    json: Json,
    path: &str,
    item: impl Parse<T>,
    violations: &mut Vec<FieldViolation>,
) -> Option<Vec<T>> {
    let Json::Array(items) = json else {
        violations.push(FieldViolation::new(path, "must be a JSON array"));
        return None;
    };
    let before = violations.len();
    let values: Vec<T> = items
        .into_iter()
        .enumerate()
        .filter_map(|(i, v)| item.json(v, &format!("{path}[{i}]"), violations))
        .collect();
    (violations.len() == before).then_some(values)
}

/// A map field from a JSON object.
pub fn json_map<K: Hash + Eq, V>(
    json: Json,
    path: &str,
    key: impl Parse<K>,
    value: impl Parse<V>,
    violations: &mut Vec<FieldViolation>,
) -> Option<HashMap<K, V>> {
    let Json::Object(object) = json else {
        violations.push(FieldViolation::new(path, "must be a JSON object"));
        return None;
    };
    let before = violations.len();
    let mut map = HashMap::with_capacity(object.len());
    for (k, v) in object {
        let item = format!("{path}[{k}]");
        match (key.text(&k), value.json(v, &item, violations)) {
            (Some(k), Some(v)) => {
                map.insert(k, v);
            }
            (None, _) => violations.push(FieldViolation::new(
                &item,
                format!("key must be {}", key.must_be()),
            )),
            _ => {}
        }
    }
    (violations.len() == before).then_some(map)
}

/// Parses a JSON document as `serde_json` does, but refuses an object that names a member twice
/// (`serde_json` would keep the last one silently, so two clients could read one body two ways).
pub fn parse_json(bytes: &[u8]) -> Result<Json, serde_json::Error> {
    use serde::de::Deserializer as _;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de.deserialize_any(Strict)?;
    de.end()?;
    Ok(value)
}

/// Builds a [`Json`] value, refusing repeated object members at any depth.
struct Strict;

impl<'de> serde::de::DeserializeSeed<'de> for Strict {
    type Value = Json;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Json, D::Error> {
        de.deserialize_any(Strict)
    }
}

impl<'de> serde::de::Visitor<'de> for Strict {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut object = JsonObject::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format_args!(
                    "the member {shown:?} is given more than once"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            object.insert(key, value);
        }
        Ok(Json::Object(object))
    }
}

macro_rules! write_numbers {
    ($format:literal: $($t:ty),*) => {$(
        impl WriteJson for $t {
            fn write_json(&self, out: &mut Vec<u8>) {
                write!(out, $format, self).expect("writing to a Vec cannot fail");
            }
        }
    )*};
}
write_numbers!("{}": i32, u32);
// 64-bit integers are strings in proto3 JSON, as JavaScript numbers cannot hold them.
write_numbers!("\"{}\"": i64, u64);

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

/// Always with milliseconds (`2019-04-14T00:00:00.000Z`), as the legacy API wrote dates.
impl WriteJson for prost_types::Timestamp {
    fn write_json(&self, out: &mut Vec<u8>) {
        let date = chrono::DateTime::from_timestamp(self.seconds, self.nanos.max(0) as u32)
            .unwrap_or_default();
        write!(out, "\"{}\"", date.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
            .expect("writing to a Vec cannot fail");
    }
}

/// A map key as JSON writes it: always a string.
pub trait MapKey: Ord {
    fn write_key(&self, out: &mut Vec<u8>);
}

impl MapKey for String {
    fn write_key(&self, out: &mut Vec<u8>) {
        write_str(out, self);
    }
}

impl MapKey for bool {
    fn write_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"\"true\"" } else { b"\"false\"" });
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl MapKey for $t {
            fn write_key(&self, out: &mut Vec<u8>) {
                write!(out, "\"{self}\"").expect("writing to a Vec cannot fail");
            }
        }
    )*};
}
integer_keys!(i32, i64, u32, u64);

/// Keys in order, so equal maps are equal bytes.
impl<K: MapKey, V: WriteJson> WriteJson for HashMap<K, V> {
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut entries: Vec<_> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        out.push(b'{');
        for (i, (key, value)) in entries.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            key.write_key(out);
            out.push(b':');
            value.write_json(out);
        }
        out.push(b'}');
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    static SORT: EnumValues = EnumValues(&[
        ("SORT_UNSPECIFIED", "unspecified", 0),
        ("SORT_NEWEST", "newest", 2),
    ]);

    #[test]
    fn enums_parse_by_either_name_or_a_defined_number() {
        assert_eq!(SORT.number("SORT_NEWEST"), Some(2));
        assert_eq!(SORT.number("Newest"), Some(2));
        assert_eq!(SORT.number("2"), Some(2));
        assert_eq!(SORT.number("7"), None);
        assert_eq!(SORT.number("oldest"), None);
    }

    #[test]
    fn integers_accept_strings_and_whole_floats_only() {
        let p = Plain("a 32-bit integer");
        let mut v = Vec::new();
        assert_eq!(p.json(Json::from("5"), "n", &mut v), Some(5i32));
        assert_eq!(p.json(serde_json::json!(5.0), "n", &mut v), Some(5i32));
        assert!(v.is_empty());
        assert_eq!(
            Parse::<i32>::json(&p, serde_json::json!(5.5), "n", &mut v),
            None
        );
        assert_eq!(Parse::<i32>::json(&p, Json::Bool(true), "n", &mut v), None);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].field, "n");
    }

    #[test]
    fn integer_text_is_an_optional_minus_and_digits() {
        assert_eq!(i32::from_text("-2"), Some(-2));
        assert_eq!(i32::from_text("+2"), None);
        assert_eq!(i32::from_text(" 2"), None);
        assert_eq!(i32::from_text(""), None);
        assert_eq!(u64::from_text("+2"), None);
        let p = Plain("a 32-bit integer");
        let mut v = Vec::new();
        assert_eq!(Parse::<i32>::json(&p, Json::from("+2"), "n", &mut v), None);
    }

    #[test]
    fn saturating_integers_clamp_to_the_range_and_refuse_the_rest() {
        let s = Saturating("a 32-bit integer");
        assert_eq!(s.text("1000000000000"), Some(i32::MAX));
        assert_eq!(s.text("-99999999999999999999999"), Some(i32::MIN));
        assert_eq!(s.text("7"), Some(7));
        assert_eq!(s.text("+7"), None);
        assert_eq!(s.text("1e3"), None);
        assert_eq!(s.value(serde_json::json!(1e300)), Some(i32::MAX));
        assert_eq!(
            s.value(serde_json::json!(18446744073709551615u64)),
            Some(i32::MAX)
        );
        assert_eq!(s.value(serde_json::json!(2.5)), None);
        assert_eq!(s.value(Json::from("12")), Some(12));
    }

    #[test]
    fn json_with_a_repeated_member_is_refused_at_any_depth() {
        assert!(parse_json(br#"{"a": 1, "b": {"c": [1, {"d": null}]}}"#).is_ok());
        let e = parse_json(br#"{"a": 1, "a": 2}"#).unwrap_err().to_string();
        assert!(e.contains("\"a\" is given more than once"), "{e}");
        assert!(parse_json(br#"{"x": [{"k": 1, "k": 1}]}"#).is_err());
        assert!(parse_json(br#"{"a": 1} x"#).is_err(), "trailing text");
        assert_eq!(
            parse_json(br#"{"n": 1.5, "s": "t", "z": -3}"#).unwrap(),
            serde_json::json!({"n": 1.5, "s": "t", "z": -3})
        );
    }

    #[test]
    fn replies_write_legacy_json() {
        let mut out = Vec::new();
        let map: HashMap<i32, i64> = [(5, 1), (1, 2)].into();
        map.write_json(&mut out);
        out.push(b' ');
        prost_types::Timestamp {
            seconds: 1_555_200_000,
            nanos: 0,
        }
        .write_json(&mut out);
        out.push(b' ');
        Option::<String>::None.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"1":"2","5":"1"} "2019-04-14T00:00:00.000Z" null"#
        );
    }
}
