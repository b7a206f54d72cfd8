//! The JSON edge's routes, read from the `google.api.http` options of the service descriptor at
//! build time, as grpc-gateway does: annotating an RPC adds its route.

use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

type Result<T> = std::result::Result<T, String>;

/// One segment of a path template: a literal, or a variable bound to a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Field(String),
}

/// Which part of the request message the HTTP body fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the body is the whole request message.
    Whole,
    /// `body: "field"`: the body is that field; the rest comes from the path and query.
    Field(String),
}

#[derive(Debug, Clone)]
pub struct Route {
    /// `GET`, `PUT`, `POST`, `DELETE` or `PATCH`.
    pub method: &'static str,
    pub template: String,
    pub segments: Vec<Segment>,
    pub body: BodyRule,
    pub rpc: MethodDescriptor,
}

/// Every route of every service in `pool`, in declaration order.
pub fn from_descriptors(pool: &DescriptorPool) -> Result<Vec<Route>> {
    let Some(http) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut routes = Vec::new();
    for service in pool.services() {
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                return Err(format!(
                    "{}: google.api.http is not a message",
                    rpc.full_name()
                ));
            };
            add_rule(&mut routes, &rpc, &rule)?;
        }
    }
    Ok(routes)
}

fn add_rule(routes: &mut Vec<Route>, rpc: &MethodDescriptor, rule: &DynamicMessage) -> Result<()> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let (method, template) = [
        ("GET", "get"),
        ("PUT", "put"),
        ("POST", "post"),
        ("DELETE", "delete"),
        ("PATCH", "patch"),
    ]
    .into_iter()
    .find_map(|(method, field)| Some((method, text(field)?)))
    .ok_or_else(|| {
        format!(
            "{}: google.api.http names no supported method",
            rpc.full_name()
        )
    })?;
    let body = match text("body").as_deref() {
        None => BodyRule::None,
        Some("*") => BodyRule::Whole,
        Some(field) => BodyRule::Field(field.to_string()),
    };
    let segments = parse_template(&template)
        .map_err(|e| format!("{}: path template {template:?}: {e}", rpc.full_name()))?;
    for segment in &segments {
        if let Segment::Field(name) = segment {
            if rpc.input().get_field_by_name(name).is_none() {
                return Err(format!(
                    "{}: path variable {{{name}}} is not a request field",
                    rpc.full_name()
                ));
            }
        }
    }
    routes.push(Route {
        method,
        template,
        segments,
        body,
        rpc: rpc.clone(),
    });
    if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").as_deref() {
        for extra in more {
            if let Value::Message(extra) = extra {
                add_rule(routes, rpc, extra)?;
            }
        }
    }
    Ok(())
}

/// Parses `/literal/{field}/literal` templates; the richer forms (`{f=pattern}`, `**`, `:verb`)
/// are refused so that an unsupported annotation fails at start-up, not per request.
fn parse_template(template: &str) -> Result<Vec<Segment>> {
    let rest = template.strip_prefix('/').ok_or("must start with '/'")?;
    rest.split('/')
        .map(|part| {
            if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("unsupported variable {part:?}"));
                }
                Ok(Segment::Field(name.to_string()))
            } else if part.is_empty() || part.contains(['{', '}', '*', ':']) {
                Err(format!("unsupported segment {part:?}"))
            } else {
                Ok(Segment::Literal(part.to_string()))
            }
        })
        .collect()
}
