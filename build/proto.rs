//! What the generators need to know about descriptors: the wrapper types, enum value names, and
//! how to tell a client what a field must hold.

use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor};

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

/// `SORT_` for an enum named `Sort`: the prefix its value names share by convention.
pub fn enum_prefix(e: &EnumDescriptor) -> String {
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

/// The short name of one enum value: `newest` for `SORT_NEWEST`.
pub fn short_name(e: &EnumDescriptor, value: &str) -> String {
    value
        .strip_prefix(&enum_prefix(e))
        .unwrap_or(value)
        .to_ascii_lowercase()
}

/// The short names a client may use for an enum, without the unspecified value.
pub fn enum_short_names(e: &EnumDescriptor) -> Vec<String> {
    e.values()
        .filter(|v| v.number() != 0)
        .map(|v| short_name(e, v.name()))
        .collect()
}

/// What a value of `kind` must be, for violation messages.
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
