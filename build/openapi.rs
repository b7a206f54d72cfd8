//! The OpenAPI 3 document of the JSON edge, generated at build time from the same routes and
//! message descriptors the edge's code is generated from, so it cannot drift from what is served.

use std::collections::BTreeMap;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{json, Value};

use crate::proto::{enum_prefix, enum_short_names, wrapped_kind};
use crate::routes::{BodyRule, Route, Segment};

/// The legacy API's answer to a bad product id (`http::INVALID_PRODUCT_ID`, checked by a test).
const INVALID_PRODUCT_ID: &str = "Error: invalid product_id provided";

pub fn document(routes: &[Route]) -> Value {
    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for route in routes {
        let op = operation(route, &mut schemas);
        paths
            .entry(route.template.clone())
            .or_default()
            .insert(route.method.to_ascii_lowercase(), op);
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error", "code"],
            "properties": {
                "error": {"type": "string"},
                "code": {"type": "string"},
                "fields": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}
                    }
                }
            }
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Reviews JSON API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP/JSON edge of reviews.v1.ReviewService, transcoded from the \
                            proto's google.api.http annotations."
        },
        "paths": paths,
        "components": {"schemas": schemas}
    })
}

fn operation(route: &Route, schemas: &mut BTreeMap<String, Value>) -> Value {
    let input = route.rpc.input();
    let mut parameters = Vec::new();
    let in_path: Vec<&str> = route
        .segments
        .iter()
        .filter_map(|s| match s {
            Segment::Field(f) => Some(f.as_str()),
            Segment::Literal(_) => None,
        })
        .collect();
    for name in &in_path {
        let field = input
            .get_field_by_name(name)
            .expect("checked when routes were built");
        parameters.push(json!({
            "name": name, "in": "path", "required": true, "schema": field_schema(&field, schemas)
        }));
    }
    if route.body == BodyRule::None {
        for field in input.fields().filter(|f| !in_path.contains(&f.name())) {
            parameters.push(json!({
                "name": field.name(), "in": "query", "required": false,
                "schema": field_schema(&field, schemas)
            }));
        }
    }
    let output = route.rpc.output();
    let (code, description) = if output.full_name() == "google.protobuf.Empty" {
        ("204", "Done; no body.")
    } else if route.method == "POST" {
        ("201", "Created.")
    } else {
        ("200", "OK.")
    };
    let mut success = json!({"description": description});
    if code != "204" {
        success["content"] = json!({"application/json": {"schema": message_ref(&output, schemas)}});
    }
    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
    };
    let mut invalid = error("Invalid input; `fields` names each invalid field.");
    invalid["content"]["text/plain"] = json!({
        "schema": {"type": "string", "enum": [INVALID_PRODUCT_ID]}
    });
    let mut op = json!({
        "operationId": route.rpc.name(),
        "tags": [route.rpc.parent_service().name()],
        "summary": format!("{} ({})", route.rpc.name(), route.rpc.full_name()),
        "parameters": parameters,
        "responses": {
            code: success,
            "404": error("No such route or resource."),
            "422": invalid,
            "503": error("The review store is unavailable; retry."),
            "500": error("Internal error.")
        }
    });
    if route.body != BodyRule::None {
        op["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": message_ref(&input, schemas)}}
        });
        op["responses"]["408"] = error("The body did not arrive within the body timeout.");
        op["responses"]["413"] = error("The body is too large.");
        op["responses"]["415"] = error("The body is not application/json.");
    }
    if route.method != "GET" {
        op["responses"]["429"] =
            error("Over this client's rate limit; retry after `Retry-After` seconds.");
    }
    if route.rpc.name() == "CreateReview" {
        op["responses"]["409"] = error("The product has a review by this email already.");
    }
    if route.rpc.name() == "GetProductRating" {
        // With `Accept: application/ld+json` (src/http/linked_data.rs).
        op["responses"]["200"]["content"]["application/ld+json"] = json!({"schema": {
            "type": "object",
            "description": "A schema.org Product with its AggregateRating and first reviews \
                            (requires product_name)",
            "required": ["@context", "@type", "name"]
        }});
    }
    if route.method == "GET" {
        op["responses"]["304"] = json!({"description": "Not modified: If-None-Match names the \
                                        current ETag."});
    }
    op
}

fn message_ref(desc: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    let name = desc.full_name().to_string();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Value::Null); // breaks cycles while the schema is built
        let properties: serde_json::Map<String, Value> = desc
            .fields()
            .map(|f| (f.name().to_string(), field_schema(&f, schemas)))
            .collect();
        schemas.insert(
            name.clone(),
            json!({"type": "object", "properties": properties, "additionalProperties": false}),
        );
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are messages");
        };
        let value = entry.map_entry_value_field();
        let mut values = kind_schema(&value.kind(), schemas);
        bounds(field, &mut values);
        return json!({"type": "object", "additionalProperties": values});
    }
    let mut single = kind_schema(&field.kind(), schemas);
    bounds(field, &mut single);
    if option(field, "saturating") == Some(json!(true)) {
        // Any integer is read, those past the 32-bit range as its nearest end.
        if let Some(schema) = single.as_object_mut() {
            schema.remove("format");
        }
    }
    if field.is_list() {
        let mut list = json!({"type": "array", "items": single});
        if let Some(n) = option(field, "max_items") {
            list["maxItems"] = n;
        }
        list
    } else {
        single
    }
}

/// The field's `(reviews.v1.minimum)` ... `(reviews.v1.format)` options, as JSON Schema bounds
/// of one value (of an item of a list, of a value of a map).
fn bounds(field: &FieldDescriptor, schema: &mut Value) {
    for (option_name, keyword) in [
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("min_length", "minLength"),
        ("max_length", "maxLength"),
        ("format", "format"),
    ] {
        if let Some(value) = option(field, option_name) {
            schema[keyword] = value;
        }
    }
}

/// The value of the field option `reviews.v1.<name>`, when set.
fn option(field: &FieldDescriptor, name: &str) -> Option<Value> {
    let ext = field
        .parent_pool()
        .get_extension_by_name(&format!("reviews.v1.{name}"))?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    Some(match &*options.get_extension(&ext) {
        prost_reflect::Value::I64(n) => json!(n),
        prost_reflect::Value::U32(n) => json!(n),
        prost_reflect::Value::String(s) => json!(s),
        prost_reflect::Value::Bool(b) => json!(b),
        other => panic!(
            "{}: unexpected value {other:?} of {name}",
            field.full_name()
        ),
    })
}

fn kind_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int64", "minimum": 0}),
        // 64-bit integers travel as strings.
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
            json!({"type": "string", "format": "int64"})
        }
        Kind::Float => json!({"type": "number", "format": "float"}),
        Kind::Double => json!({"type": "number", "format": "double"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            let mut names = enum_short_names(e);
            let prefix = enum_prefix(e);
            names.extend(e.values().map(|v| v.name().to_string()));
            // By name, or by number as the proto JSON mapping allows.
            let numbers: Vec<i32> = e.values().map(|v| v.number()).collect();
            json!({"oneOf": [{"type": "string", "enum": names}, {"type": "integer", "enum": numbers}],
                   "description": format!("{} values, by name or number; the {prefix} prefix may be left out, in lower case", e.name())})
        }
        Kind::Message(m) => match (wrapped_kind(m), m.full_name()) {
            (Some(inner), _) => {
                let mut schema = kind_schema(&inner, schemas);
                schema["nullable"] = json!(true);
                schema
            }
            (None, "google.protobuf.Timestamp") => {
                json!({"type": "string", "format": "date-time", "nullable": true})
            }
            (None, "google.protobuf.Empty") => json!({"type": "object"}),
            (None, _) => json!({"allOf": [message_ref(m, schemas)], "nullable": true}),
        },
    }
}
