//! The JSON edge's routes, read from the `google.api.http` options of the service descriptor at
//! start-up, as grpc-gateway and Envoy's transcoder do: annotating an RPC adds its route.

use anyhow::{anyhow, bail};
use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

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
    pub method: Method,
    pub template: String,
    pub segments: Vec<Segment>,
    pub body: BodyRule,
    pub rpc: MethodDescriptor,
}

impl Route {
    /// The gRPC path of the RPC this route calls, e.g. `/reviews.v1.ReviewService/ListReviews`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.rpc.parent_service().full_name(),
            self.rpc.name()
        )
    }

    /// The path variables bound by `path`, or `None` when it does not match this template.
    pub fn match_path<'a>(&'a self, path: &str) -> Option<Vec<(&'a str, String)>> {
        let parts: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut bound = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            let decoded = percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .ok()?
                .into_owned();
            match segment {
                Segment::Literal(lit) if *lit == decoded => {}
                Segment::Literal(_) => return None,
                Segment::Field(name) => bound.push((name.as_str(), decoded)),
            }
        }
        Some(bound)
    }
}

/// Every route of every service in `pool`, in declaration order.
pub fn from_descriptors(pool: &DescriptorPool) -> anyhow::Result<Vec<Route>> {
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
                bail!("{}: google.api.http is not a message", rpc.full_name());
            };
            add_rule(&mut routes, &rpc, &rule)?;
        }
    }
    Ok(routes)
}

fn add_rule(
    routes: &mut Vec<Route>,
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
) -> anyhow::Result<()> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    let (method, template) = [
        (Method::GET, "get"),
        (Method::PUT, "put"),
        (Method::POST, "post"),
        (Method::DELETE, "delete"),
        (Method::PATCH, "patch"),
    ]
    .into_iter()
    .find_map(|(method, field)| Some((method, text(field)?)))
    .ok_or_else(|| {
        anyhow!(
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
        .map_err(|e| anyhow!("{}: path template {template:?}: {e}", rpc.full_name()))?;
    for segment in &segments {
        if let Segment::Field(name) = segment {
            if rpc.input().get_field_by_name(name).is_none() {
                bail!(
                    "{}: path variable {{{name}}} is not a request field",
                    rpc.full_name()
                );
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
fn parse_template(template: &str) -> Result<Vec<Segment>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_into_literals_and_fields() {
        assert_eq!(
            parse_template("/reviews/{review_id}/helpful").unwrap(),
            [
                Segment::Literal("reviews".into()),
                Segment::Field("review_id".into()),
                Segment::Literal("helpful".into())
            ]
        );
        for bad in ["reviews", "/a/{b=*}", "/a/**", "/a:verb", "/a//b", "/{}"] {
            assert!(parse_template(bad).is_err(), "{bad}");
        }
    }
}
