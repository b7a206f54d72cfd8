//! Response messages as JSON: proto3's canonical mapping with the proto field names, every field
//! emitted (unset messages as `null`), map keys in order, and timestamps always with
//! milliseconds (`2019-04-14T00:00:00.000Z`), as the legacy API wrote them.

use std::io::Write;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};

use super::json_in::wrapped_kind;

/// `msg` as a JSON object.
pub fn to_json(msg: &DynamicMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_message(&mut out, msg);
    out
}

fn write_message(out: &mut Vec<u8>, msg: &DynamicMessage) {
    let desc = msg.descriptor();
    if write_well_known(out, &desc, msg) {
        return;
    }
    out.push(b'{');
    for (i, field) in desc.fields().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, field.name());
        out.push(b':');
        if field.supports_presence() && !msg.has_field(&field) {
            out.extend_from_slice(b"null");
        } else {
            write_field(out, &field, &msg.get_field(&field));
        }
    }
    out.push(b'}');
}

fn write_field(out: &mut Vec<u8>, field: &FieldDescriptor, value: &Value) {
    match value {
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_single(out, &field.kind(), item);
            }
            out.push(b']');
        }
        Value::Map(map) => {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map fields are messages");
            };
            let value_kind = entry.map_entry_value_field().kind();
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match key {
                    MapKey::String(s) => write_str(out, s),
                    MapKey::Bool(b) => write_str(out, if *b { "true" } else { "false" }),
                    MapKey::I32(n) => write_str(out, &n.to_string()),
                    MapKey::I64(n) => write_str(out, &n.to_string()),
                    MapKey::U32(n) => write_str(out, &n.to_string()),
                    MapKey::U64(n) => write_str(out, &n.to_string()),
                }
                out.push(b':');
                write_single(out, &value_kind, value);
            }
            out.push(b'}');
        }
        single => write_single(out, &field.kind(), single),
    }
}

fn write_single(out: &mut Vec<u8>, kind: &Kind, value: &Value) {
    match value {
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::I32(n) => write!(out, "{n}").unwrap(),
        Value::U32(n) => write!(out, "{n}").unwrap(),
        // 64-bit integers are strings in proto3 JSON, as JavaScript numbers cannot hold them.
        Value::I64(n) => write!(out, "\"{n}\"").unwrap(),
        Value::U64(n) => write!(out, "\"{n}\"").unwrap(),
        Value::F32(f) => write_float(out, f64::from(*f)),
        Value::F64(f) => write_float(out, *f),
        Value::String(s) => write_str(out, s),
        Value::Bytes(b) => write_str(out, &base64(b)),
        Value::EnumNumber(n) => match kind {
            Kind::Enum(e) => match e.get_value(*n) {
                Some(v) => write_str(out, v.name()),
                None => write!(out, "{n}").unwrap(),
            },
            _ => write!(out, "{n}").unwrap(),
        },
        Value::Message(m) => write_message(out, m),
        Value::List(_) | Value::Map(_) => unreachable!("lists and maps are fields, not values"),
    }
}

/// The JSON forms of the well-known types the service uses; `false` for other messages.
fn write_well_known(out: &mut Vec<u8>, desc: &MessageDescriptor, msg: &DynamicMessage) -> bool {
    if let Some(kind) = wrapped_kind(desc) {
        let value = msg
            .get_field_by_name("value")
            .expect("wrappers have a value");
        write_single(out, &kind, &value);
        return true;
    }
    match desc.full_name() {
        "google.protobuf.Timestamp" => {
            let int = |name| match msg.get_field_by_name(name).as_deref() {
                Some(Value::I64(n)) => *n,
                Some(Value::I32(n)) => i64::from(*n),
                _ => 0,
            };
            let date = chrono::DateTime::from_timestamp(int("seconds"), int("nanos") as u32)
                .unwrap_or_default();
            write_str(out, &date.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
            true
        }
        "google.protobuf.Empty" => {
            out.extend_from_slice(b"{}");
            true
        }
        _ => false,
    }
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        write_str(out, "NaN");
    } else if f.is_infinite() {
        write_str(out, if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        write!(out, "{f}").unwrap();
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to a Vec cannot fail");
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_pads() {
        assert_eq!(super::base64(b"Ma"), "TWE=");
        assert_eq!(super::base64(b"Man"), "TWFu");
        assert_eq!(super::base64(b"M"), "TQ==");
    }
}
