//! The rendered manifests, the objects an operator adds to them, a container's environment as
//! the kubelet builds it, and the throwaway servers that stand in for PostgreSQL and Redis.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use reviews::local::{LocalPostgres, LocalRedis};
use serde_json::{json, Value};

pub use crate::common::sandbox::render;
use crate::common::sandbox::Netns;
use crate::common::scratch_dir;
use crate::image::{set, Image};

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The objects an operator creates from the rendered ones: CloudNativePG's `<cluster>-app`
/// Secret and its `-rw`, `-ro` and `-r` Services, for each `Cluster`.
pub fn operator_objects(objects: &[Value]) -> Vec<Value> {
    let mut made = Vec::new();
    for cluster in objects.iter().filter(|o| {
        o["kind"] == "Cluster"
            && o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("postgresql.cnpg.io/"))
    }) {
        let name = cluster["metadata"]["name"].as_str().unwrap();
        let ns = cluster["metadata"]["namespace"].as_str().unwrap();
        let initdb = &cluster["spec"]["bootstrap"]["initdb"];
        let owner = initdb["owner"].as_str().unwrap_or("app");
        let db = initdb["database"].as_str().unwrap_or("app");
        let password = "generated-by-the-operator";
        made.push(json!({
            "kind": "Secret",
            "metadata": {"name": format!("{name}-app")},
            "stringData": {
                "username": owner, "password": password, "dbname": db,
                "host": format!("{name}-rw"), "port": "5432",
                "uri": format!("postgresql://{owner}:{password}@{name}-rw.{ns}:5432/{db}"),
            }
        }));
        for suffix in ["rw", "ro", "r"] {
            made.push(json!({
                "kind": "Service",
                "metadata": {"name": format!("{name}-{suffix}")},
                "spec": {
                    "selector": {"app.kubernetes.io/component": "postgres"},
                    "ports": [{"port": 5432}],
                }
            }));
        }
    }
    made
}

/// A ConfigMap's or Secret's values (`stringData`; this project writes no base64 `data`).
pub fn values_of(object: &Value) -> BTreeMap<String, String> {
    assert!(
        object.get("data").is_none() || object["kind"] == "ConfigMap",
        "Secret {} uses base64 `data`: decode it here",
        object["metadata"]["name"]
    );
    let field = if object["kind"] == "ConfigMap" {
        "data"
    } else {
        "stringData"
    };
    object[field]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("string values").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `$(NAME)` references to variables defined before, as the kubelet expands them (`$$` escapes).
pub fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')'))
        {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&rest[..name.len() + 3]),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment as the kubelet builds it: the image's `ENV`, then `envFrom` in
/// order, then `env` (which may refer to what came before).
pub fn container_env(objects: &[Value], container: &Value, image: &Image) -> Vec<(String, String)> {
    let mut env = image.env.clone();
    let lookup = |kind: &str, name: &str| {
        find(objects, kind, name)
            .unwrap_or_else(|| panic!("{kind} {name} is neither rendered nor made by an operator"))
    };
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or("");
        let (kind, reference) = if source.get("configMapRef").is_some() {
            ("ConfigMap", &source["configMapRef"])
        } else {
            ("Secret", &source["secretRef"])
        };
        for (k, v) in values_of(lookup(kind, reference["name"].as_str().unwrap())) {
            set(&mut env, &format!("{prefix}{k}"), &v);
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().unwrap();
        let value = if let Some(v) = var["value"].as_str() {
            expand(v, &env)
        } else {
            let from = &var["valueFrom"];
            let (kind, key_ref) = if from.get("secretKeyRef").is_some() {
                ("Secret", &from["secretKeyRef"])
            } else if from.get("configMapKeyRef").is_some() {
                ("ConfigMap", &from["configMapKeyRef"])
            } else {
                panic!("env {name}: unsupported valueFrom {from}");
            };
            let values = values_of(lookup(kind, key_ref["name"].as_str().unwrap()));
            let key = key_ref["key"].as_str().unwrap();
            values
                .get(key)
                .unwrap_or_else(|| panic!("{kind} has no key {key}"))
                .clone()
        };
        set(&mut env, name, &value);
    }
    env
}

/// Throwaway PostgreSQL and Redis listening where the pod's namespace reaches them.
pub struct Backends {
    pub _pg: LocalPostgres,
    pub _redis: LocalRedis,
    pub pg: SocketAddr,
    pub redis: SocketAddr,
    pub dir: PathBuf,
}

impl Backends {
    pub async fn start(netns: &Netns, tag: &str) -> Self {
        let dir = scratch_dir(tag);
        let mut pg = LocalPostgres::init(&dir.join("pg")).unwrap();
        pg.listen_also(netns.host, netns.inside).unwrap();
        pg.start().unwrap();
        let redis = LocalRedis::start_on(&dir.join("redis"), Some(netns.host)).unwrap();
        Self {
            pg: SocketAddr::from((netns.host, pg.port())),
            redis: SocketAddr::from((netns.host, redis.port())),
            _pg: pg,
            _redis: redis,
            dir,
        }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://reviews@127.0.0.1:{}/postgres", self.pg.port())
    }
}

/// Points every URL in `env` at the test's servers: a host that is a rendered (or operator-made)
/// Service of PostgreSQL or Redis, on that Service's port, becomes the matching throwaway
/// server. A URL naming any other host fails the test. Returns the databases the URLs name.
pub fn map_hosts(
    env: &mut [(String, String)],
    services: &[Value],
    ns: &str,
    to: &Backends,
) -> Vec<String> {
    let mut databases = Vec::new();
    for (name, value) in env.iter_mut() {
        let Some((scheme, rest)) = value.split_once("://") else {
            continue;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let (host, port) = hostport.split_once(':').unwrap_or((hostport, ""));
        let short = [
            format!(".{ns}.svc.cluster.local"),
            format!(".{ns}.svc"),
            format!(".{ns}"),
        ]
        .iter()
        .find_map(|s| host.strip_suffix(s.as_str()))
        .unwrap_or(host);
        let service = services
            .iter()
            .find(|s| s["kind"] == "Service" && s["metadata"]["name"] == short)
            .unwrap_or_else(|| panic!("{name} points at {host}, which no Service provides"));
        let component = service["spec"]["selector"]["app.kubernetes.io/component"].as_str();
        let target = match component {
            Some("postgres") => to.pg,
            Some("redis") => to.redis,
            other => panic!("{name} points at Service {short} of component {other:?}"),
        };
        let default_port = if scheme.starts_with("redis") {
            "6379"
        } else {
            "5432"
        };
        let port = if port.is_empty() { default_port } else { port };
        let ports: Vec<String> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].to_string())
            .collect();
        assert!(
            ports.iter().any(|p| p == port),
            "{name}: Service {short} has no port {port}"
        );
        if component == Some("postgres") {
            let db = path.trim_start_matches('/').split('?').next().unwrap_or("");
            databases.push(db.to_string());
        }
        *value = format!("{scheme}://{userinfo}{target}{path}");
    }
    databases
}
