//! Request messages from JSON bodies, query strings and path variables, following proto3's
//! canonical JSON mapping (either field-name spelling, numbers or strings for integers, enum names).
//! Every problem is reported against the field it concerns.

use std::collections::HashSet;

use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::Value as Json;

use crate::error::FieldViolation;

type Violations = Vec<FieldViolation>;

fn violation(field: &str, reason: impl Into<String>) -> FieldViolation {
    FieldViolation::new(field, reason)
}

fn find_field(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(key)
        .or_else(|| desc.get_field_by_json_name(key))
}

/// Fills `msg` from a JSON object; `prefix` names the enclosing field in violations.
pub fn merge_object(msg: &mut DynamicMessage, json: Json, prefix: &str) -> Result<(), Violations> {
    let Json::Object(object) = json else {
        let name = if prefix.is_empty() { "body" } else { prefix };
        return Err(vec![violation(name, "must be a JSON object")]);
    };
    let desc = msg.descriptor();
    let mut violations = Vec::new();
    for (key, value) in object {
        let path = join(prefix, &key);
        let Some(field) = find_field(&desc, &key) else {
            violations.push(violation(&path, "is not a known field"));
            continue;
        };
        if value.is_null() {
            continue; // null is the field's default
        }
        match field_value(&field, value, &join(prefix, field.name())) {
            Ok(v) => msg.set_field(&field, v),
            Err(mut v) => violations.append(&mut v),
        }
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn field_value(field: &FieldDescriptor, json: Json, path: &str) -> Result<Value, Violations> {
    if field.is_map() {
        let Json::Object(object) = json else {
            return Err(vec![violation(path, "must be a JSON object")]);
        };
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are messages");
        };
        let (key_kind, value_kind) = (
            entry.map_entry_key_field().kind(),
            entry.map_entry_value_field().kind(),
        );
        let mut map = std::collections::HashMap::new();
        let mut violations = Vec::new();
        for (k, v) in object {
            let item = format!("{path}[{k}]");
            match (map_key(&key_kind, &k), single(&value_kind, v, &item)) {
                (Some(key), Ok(value)) => {
                    map.insert(key, value);
                }
                (None, _) => violations.push(violation(
                    &item,
                    format!("key must be {}", describe(&key_kind)),
                )),
                (_, Err(mut e)) => violations.append(&mut e),
            }
        }
        return if violations.is_empty() {
            Ok(Value::Map(map))
        } else {
            Err(violations)
        };
    }
    if field.is_list() {
        let Json::Array(items) = json else {
            return Err(vec![violation(path, "must be a JSON array")]);
        };
        let kind = field.kind();
        let mut values = Vec::new();
        let mut violations = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match single(&kind, item, &format!("{path}[{i}]")) {
                Ok(v) => values.push(v),
                Err(mut e) => violations.append(&mut e),
            }
        }
        return if violations.is_empty() {
            Ok(Value::List(values))
        } else {
            Err(violations)
        };
    }
    single(&field.kind(), json, path)
}

/// One (non-repeated) value of `kind` from JSON.
fn single(kind: &Kind, json: Json, path: &str) -> Result<Value, Violations> {
    let bad = || vec![violation(path, format!("must be {}", describe(kind)))];
    let parsed = match (kind, json) {
        (Kind::Message(m), json) => return message(m, json, path),
        (Kind::String, Json::String(s)) => Some(Value::String(s)),
        (Kind::Bool, Json::Bool(b)) => Some(Value::Bool(b)),
        (Kind::Enum(_), Json::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Value::EnumNumber),
        (_, Json::String(s)) if !matches!(kind, Kind::String | Kind::Bytes) => {
            scalar_from_text(kind, &s)
        }
        (_, Json::Number(n)) => number(kind, &n),
        _ => None,
    };
    parsed.ok_or_else(bad)
}

fn number(kind: &Kind, n: &serde_json::Number) -> Option<Value> {
    // Integers may arrive as floats with no fraction (`5.0`), as proto3 JSON allows.
    let int = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    });
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            int.and_then(|i| i32::try_from(i).ok()).map(Value::I32)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => int.map(Value::I64),
        Kind::Uint32 | Kind::Fixed32 => int.and_then(|i| u32::try_from(i).ok()).map(Value::U32),
        Kind::Uint64 | Kind::Fixed64 => n
            .as_u64()
            .or_else(|| int.and_then(|i| u64::try_from(i).ok()))
            .map(Value::U64),
        Kind::Double => n.as_f64().map(Value::F64),
        Kind::Float => n.as_f64().map(|f| Value::F32(f as f32)),
        _ => None,
    }
}

/// The well-known types get their JSON forms; other messages are objects.
fn message(desc: &MessageDescriptor, json: Json, path: &str) -> Result<Value, Violations> {
    if let Some(inner) = wrapped_kind(desc) {
        let value = single(&inner, json, path)?;
        let mut msg = DynamicMessage::new(desc.clone());
        msg.set_field_by_name("value", value);
        return Ok(Value::Message(msg));
    }
    if desc.full_name() == "google.protobuf.Timestamp" {
        let parsed = json
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        let Some(t) = parsed else {
            return Err(vec![violation(path, "must be an RFC 3339 date-time")]);
        };
        let mut msg = DynamicMessage::new(desc.clone());
        msg.set_field_by_name("seconds", Value::I64(t.timestamp()));
        msg.set_field_by_name("nanos", Value::I32(t.timestamp_subsec_nanos() as i32));
        return Ok(Value::Message(msg));
    }
    let mut msg = DynamicMessage::new(desc.clone());
    merge_object(&mut msg, json, path)?;
    Ok(Value::Message(msg))
}

/// The kind a `google.protobuf.*Value` wrapper holds.
pub fn wrapped_kind(desc: &MessageDescriptor) -> Option<Kind> {
    let name = desc.full_name().strip_prefix("google.protobuf.")?;
    matches!(
        name,
        "StringValue"
            | "BoolValue"
            | "Int32Value"
            | "Int64Value"
            | "UInt32Value"
            | "UInt64Value"
            | "DoubleValue"
            | "FloatValue"
            | "BytesValue"
    )
    .then(|| desc.get_field_by_name("value").map(|f| f.kind()))
    .flatten()
}

/// A scalar or enum from text (a query parameter, a path variable, a quoted JSON number).
fn scalar_from_text(kind: &Kind, text: &str) -> Option<Value> {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => text.parse().ok().map(Value::I32),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => text.parse().ok().map(Value::I64),
        Kind::Uint32 | Kind::Fixed32 => text.parse().ok().map(Value::U32),
        Kind::Uint64 | Kind::Fixed64 => text.parse().ok().map(Value::U64),
        Kind::Double => text.parse().ok().map(Value::F64),
        Kind::Float => text.parse().ok().map(Value::F32),
        Kind::Bool => match text {
            "true" => Some(Value::Bool(true)),
            "false" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::String => Some(Value::String(text.to_string())),
        Kind::Enum(e) => enum_number(e, text).map(Value::EnumNumber),
        _ => None,
    }
}

/// An enum value by its full name (`SORT_NEWEST`), its short lower-case name (`newest`), or its
/// number.
fn enum_number(e: &prost_reflect::EnumDescriptor, text: &str) -> Option<i32> {
    if let Some(v) = e.get_value_by_name(text) {
        return Some(v.number());
    }
    let prefix = enum_prefix(e);
    e.values()
        .find(|v| {
            v.name()
                .strip_prefix(&prefix)
                .is_some_and(|short| short.eq_ignore_ascii_case(text))
        })
        .map(|v| v.number())
        .or_else(|| text.parse().ok().filter(|n| e.get_value(*n).is_some()))
}

/// `SORT_` for an enum named `Sort`: the prefix its value names share by convention.
pub fn enum_prefix(e: &prost_reflect::EnumDescriptor) -> String {
    let mut prefix = String::new();
    for (i, c) in e.name().chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            prefix.push('_');
        }
        prefix.push(c.to_ascii_uppercase());
    }
    prefix.push('_');
    prefix
}

/// The short names a client may use for an enum, without the unspecified value.
pub fn enum_short_names(e: &prost_reflect::EnumDescriptor) -> Vec<String> {
    let prefix = enum_prefix(e);
    e.values()
        .filter(|v| v.number() != 0)
        .map(|v| {
            v.name()
                .strip_prefix(&prefix)
                .unwrap_or(v.name())
                .to_ascii_lowercase()
        })
        .collect()
}

fn map_key(kind: &Kind, text: &str) -> Option<MapKey> {
    Some(match scalar_from_text(kind, text)? {
        Value::I32(v) => MapKey::I32(v),
        Value::I64(v) => MapKey::I64(v),
        Value::U32(v) => MapKey::U32(v),
        Value::U64(v) => MapKey::U64(v),
        Value::Bool(v) => MapKey::Bool(v),
        Value::String(v) => MapKey::String(v),
        _ => return None,
    })
}

/// What a value of `kind` must be, for messages.
pub fn describe(kind: &Kind) -> String {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer".into(),
        Kind::Uint32 | Kind::Fixed32 => "a non-negative 32-bit integer".into(),
        Kind::Uint64 | Kind::Fixed64 => "a non-negative 64-bit integer".into(),
        Kind::Float | Kind::Double => "a number".into(),
        Kind::Bool => "true or false".into(),
        Kind::String => "a string".into(),
        Kind::Bytes => "base64 text".into(),
        Kind::Enum(e) => format!("one of {}", enum_short_names(e).join(", ")),
        Kind::Message(m) => match wrapped_kind(m) {
            Some(inner) => describe(&inner),
            None if m.full_name() == "google.protobuf.Timestamp" => "an RFC 3339 date-time".into(),
            None => "a JSON object".into(),
        },
    }
}

/// Binds one query parameter or path variable to its field. `seen` catches repeats.
pub fn set_from_text(
    msg: &mut DynamicMessage,
    name: &str,
    text: &str,
    seen: &mut HashSet<String>,
) -> Result<(), FieldViolation> {
    let desc = msg.descriptor();
    let Some(field) = find_field(&desc, name) else {
        return Err(violation(name, "is not a parameter of this route"));
    };
    let kind = field.kind();
    let scalar_kind = match &kind {
        Kind::Message(m) => wrapped_kind(m),
        k => Some(k.clone()),
    };
    let Some(scalar_kind) = scalar_kind.filter(|_| !field.is_map()) else {
        return Err(violation(name, "cannot be given in the URL"));
    };
    let Some(value) = scalar_from_text(&scalar_kind, text) else {
        return Err(violation(name, format!("must be {}", describe(&kind))));
    };
    let value = match &kind {
        Kind::Message(m) => {
            let mut wrapper = DynamicMessage::new(m.clone());
            wrapper.set_field_by_name("value", value);
            Value::Message(wrapper)
        }
        _ => value,
    };
    if field.is_list() {
        if let Value::List(items) = msg.get_field_mut(&field) {
            items.push(value);
        }
        return Ok(());
    }
    if !seen.insert(field.name().to_string()) {
        return Err(violation(name, "is given more than once"));
    }
    msg.set_field(&field, value);
    Ok(())
}
