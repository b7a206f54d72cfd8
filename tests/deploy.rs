//! The deployment contract: the binary started exactly as the rendered Kubernetes manifests and
//! the Dockerfile's runtime stage start it, in a network namespace of its own (a pod's), as the
//! user they name, on a read-only root filesystem where they ask for one, from a working
//! directory it cannot write to. The migrate Job must complete; the Deployment's process must
//! pass its probes the way the kubelet runs them, and after the preStop delay a SIGTERM must end
//! it within the grace period with every call in flight answered.
//!
//! Nothing is copied from the manifests: command, arguments, environment (ConfigMaps, Secrets,
//! `$(VAR)` references), ports, probes, user, filesystem, preStop and grace period are read from
//! `kubectl kustomize` output and the Dockerfile. Only the host names of PostgreSQL, its read
//! service and Redis are mapped to this test's throwaway servers.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::sandbox::{self, grpc_health, Confinement, Netns, Proc, SERVING};
use common::scratch_dir;
use reviews::local::{LocalPostgres, LocalRedis};
use serde_json::{json, Value};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// The image, from the Dockerfile's last stage.

#[derive(Debug)]
struct Image {
    /// Where the stage puts the `reviews` binary.
    binary: String,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    user: (u32, u32),
    exposed: Vec<u16>,
    workdir: String,
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (op, rest) = current
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

/// An exec-form (`["a", "b"]`) argument list; the shell form would put `/bin/sh` in between.
fn exec_form(op: &str, value: &str) -> Vec<String> {
    serde_json::from_str(value)
        .unwrap_or_else(|_| panic!("{op} must be in exec form (a JSON array): {value}"))
}

fn dockerfile_image() -> Image {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let all = instructions(&text);
    let last_from = all
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("no FROM");
    let mut image = Image {
        binary: String::new(),
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        user: (0, 0),
        exposed: Vec::new(),
        workdir: "/".into(),
    };
    for (op, value) in &all[last_from + 1..] {
        match op.as_str() {
            "COPY" => {
                let parts: Vec<&str> = value
                    .split_whitespace()
                    .filter(|p| !p.starts_with("--"))
                    .collect();
                if parts[0].ends_with("/reviews") {
                    image.binary = parts[1].to_string();
                }
            }
            "USER" => {
                let (u, g) = value.split_once(':').unwrap_or((value, value));
                image.user = (u.parse().expect("USER must be numeric"), g.parse().unwrap());
            }
            "EXPOSE" => image.exposed.extend(
                value
                    .split_whitespace()
                    .map(|p| p.trim_end_matches("/tcp").parse::<u16>().unwrap()),
            ),
            "ENV" => {
                for pair in value.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV key=value");
                    set(&mut image.env, k, v.trim_matches('"'));
                }
            }
            "WORKDIR" => image.workdir = value.clone(),
            "ENTRYPOINT" => image.entrypoint = exec_form(op, value),
            "CMD" => image.cmd = exec_form(op, value),
            _ => {}
        }
    }
    assert!(
        !image.binary.is_empty(),
        "the runtime stage copies no reviews binary"
    );
    image
}

fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

// ---------------------------------------------------------------------------------------------
// The rendered manifests.

fn render(overlay: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("k8s/overlays/{overlay}")])
        .current_dir(repo())
        .output()
        .expect("could not run kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // kustomize separates the documents with `---` lines.
    format!("\n{text}")
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The objects an operator creates from the rendered ones: CloudNativePG's `<cluster>-app`
/// Secret and its `-rw`, `-ro` and `-r` Services, for each `Cluster`.
fn operator_objects(objects: &[Value]) -> Vec<Value> {
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
fn values_of(object: &Value) -> BTreeMap<String, String> {
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
fn expand(value: &str, env: &[(String, String)]) -> String {
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
fn container_env(objects: &[Value], container: &Value, image: &Image) -> Vec<(String, String)> {
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

// ---------------------------------------------------------------------------------------------
// The test's stand-ins for the cluster's PostgreSQL and Redis.

/// Throwaway PostgreSQL and Redis listening where the pod's namespace reaches them.
struct Backends {
    _pg: LocalPostgres,
    _redis: LocalRedis,
    pg: SocketAddr,
    redis: SocketAddr,
    dir: PathBuf,
}

impl Backends {
    async fn start(netns: &Netns, tag: &str) -> Self {
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

    fn admin_url(&self) -> String {
        format!("postgres://reviews@127.0.0.1:{}/postgres", self.pg.port())
    }
}

/// Points every URL in `env` at the test's servers: a host that is a rendered (or operator-made)
/// Service of PostgreSQL or Redis, on that Service's port, becomes the matching throwaway
/// server. A URL naming any other host fails the test. Returns the databases the URLs name.
fn map_hosts(
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

// ---------------------------------------------------------------------------------------------
// Running a container.

/// How the runtime starts one container.
#[derive(Debug)]
struct Start {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    user: (u32, u32),
    read_only_root: bool,
    workdir: String,
}

/// `command`/`args` over the image's `ENTRYPOINT`/`CMD`, as Kubernetes combines them.
fn argv(container: &Value, image: &Image) -> Vec<String> {
    let list = |v: &Value| -> Option<Vec<String>> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
    };
    match (list(&container["command"]), list(&container["args"])) {
        (Some(c), Some(a)) => [c, a].concat(),
        (Some(c), None) => c,
        (None, Some(a)) => [image.entrypoint.clone(), a].concat(),
        (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

fn pod_start(objects: &[Value], pod: &Value, container: &Value, image: &Image) -> Start {
    let context = |field: &str| {
        container["securityContext"]
            .get(field)
            .or_else(|| pod["securityContext"].get(field))
            .and_then(Value::as_u64)
    };
    let user = (
        context("runAsUser").map_or(image.user.0, |u| u as u32),
        context("runAsGroup").map_or(image.user.1, |g| g as u32),
    );
    if pod["securityContext"]["runAsNonRoot"] == true
        || container["securityContext"]["runAsNonRoot"] == true
    {
        assert_ne!(user.0, 0, "runAsNonRoot with user 0 would not start");
    }
    Start {
        argv: argv(container, image),
        env: container_env(objects, container, image),
        user,
        read_only_root: container["securityContext"]["readOnlyRootFilesystem"] == true,
        workdir: container["workingDir"]
            .as_str()
            .unwrap_or(&image.workdir)
            .to_string(),
    }
}

/// The binary where the image has it, readable by any user (the test's own build may sit in a
/// folder only root can enter).
fn installed_binary(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin/reviews");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(sandbox::BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn launch(start: &Start, image: &Image, netns: &Netns, bin: &Path) -> Proc {
    assert_eq!(
        start.argv[0], image.binary,
        "the container runs {}, but the image has the binary at {}",
        start.argv[0], image.binary
    );
    let mut cmd = Command::new(bin);
    cmd.args(&start.argv[1..])
        .env_clear()
        .envs(start.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&start.workdir);
    confinement(start, netns).apply(&mut cmd);
    Proc::spawn(&mut cmd)
}

fn confinement<'a>(start: &Start, netns: &'a Netns) -> Confinement<'a> {
    Confinement {
        netns: Some(netns),
        user: Some(start.user),
        read_only_root: start.read_only_root,
    }
}

/// What the confined process could write: checked by a shell run under the same confinement.
async fn writable_places(start: &Start, netns: &Netns) -> Vec<String> {
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#"for d in "$PWD" / /tmp /var/tmp; do if (: > "$d/.rw-probe") 2>/dev/null; then rm -f "$d/.rw-probe"; echo "$d"; fi; done"#,
    ])
    .current_dir(&start.workdir);
    confinement(start, netns).apply(&mut cmd);
    let mut sh = Proc::spawn(&mut cmd);
    assert_eq!(
        sh.finish(Duration::from_secs(10)).await,
        0,
        "{}",
        sh.transcript()
    );
    sh.stdout()
}

// ---------------------------------------------------------------------------------------------
// Probes, as the kubelet runs them.

fn seconds(v: &Value, field: &str, default: u64) -> Duration {
    Duration::from_secs(v[field].as_u64().unwrap_or(default))
}

fn port_of(port: &Value, container: &Value) -> u16 {
    if let Some(n) = port.as_u64() {
        return n as u16;
    }
    let name = port.as_str().unwrap();
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

async fn probe_once(probe: &Value, container: &Value, pod_ip: Ipv4Addr) -> Result<(), String> {
    let timeout = seconds(probe, "timeoutSeconds", 1);
    if let Some(grpc) = probe.get("grpc") {
        let addr = SocketAddr::from((
            pod_ip,
            grpc["port"].as_u64().expect("gRPC probes take a number") as u16,
        ));
        let service = grpc["service"].as_str().unwrap_or("");
        return match grpc_health(addr, service).await {
            Ok(SERVING) => Ok(()),
            other => Err(format!("gRPC health {service:?} at {addr}: {other:?}")),
        };
    }
    if let Some(get) = probe.get("httpGet") {
        let port = port_of(&get["port"], container);
        let url = format!(
            "http://{pod_ip}:{port}{}",
            get["path"].as_str().unwrap_or("/")
        );
        let resp = reqwest::Client::new()
            .get(&url)
            .timeout(timeout)
            .send()
            .await;
        return match resp {
            Ok(r) if (200..400).contains(&r.status().as_u16()) => Ok(()),
            other => Err(format!("GET {url}: {other:?}")),
        };
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let addr = SocketAddr::from((pod_ip, port_of(&tcp["port"], container)));
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(()),
            other => Err(format!("connect {addr}: {other:?}")),
        };
    }
    panic!("unsupported probe {probe}");
}

/// Runs a probe every `periodSeconds` after `initialDelaySeconds` until it succeeds, failing the
/// test after `failureThreshold` failures.
/// A process that exits meanwhile fails the test at once, with what it printed (the kubelet
/// would restart it into a crash loop).
async fn probe_until_success(kind: &str, container: &Value, pod_ip: Ipv4Addr, server: &mut Proc) {
    let Some(probe) = container.get(kind) else {
        return;
    };
    tokio::time::sleep(seconds(probe, "initialDelaySeconds", 0)).await;
    let threshold = probe["failureThreshold"].as_u64().unwrap_or(3);
    let mut failures = 0;
    loop {
        if let Some(status) = server.try_status() {
            panic!(
                "exited ({status}) before its {kind} passed\n{}",
                server.transcript()
            );
        }
        let Err(e) = probe_once(probe, container, pod_ip).await else {
            return;
        };
        failures += 1;
        assert!(
            failures < threshold,
            "{kind} failed {threshold} times, lastly: {e}"
        );
        tokio::time::sleep(seconds(probe, "periodSeconds", 10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The checks.

async fn sql(url: &str) -> tokio_postgres::Client {
    common::sql(url).await
}

/// Calls that are in flight at SIGTERM: each waits on a table lock the test holds until after
/// the signal. Returns their outcomes.
async fn terminate_with_calls_in_flight(
    server: &mut Proc,
    pod: SocketAddr,
    db_url: &str,
    pre_stop: Duration,
    grace: Duration,
) {
    let terminating = Instant::now();
    let http = reqwest::Client::new();
    let base = format!("http://{pod}");
    let channel = common::channel(pod).await;
    // Warm connections, so the calls below need no new one.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The kubelet runs the preStop hook, then sends SIGTERM; the calls start just before.
    tokio::time::sleep(pre_stop.saturating_sub(Duration::from_secs(2))).await;
    let mut locker = sql(db_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute(
        "LOCK TABLE reviews, product_stats, characteristics IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    let mut list_client = reviews::pb::review_service_client::ReviewServiceClient::new(channel);
    let grpc_list = tokio::spawn(async move {
        list_client
            .list_reviews(reviews::pb::ListReviewsRequest {
                product_id: 7,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().results.len())
    });
    let meta = tokio::spawn(http.get(format!("{base}/reviews/meta?product_id=8")).send());
    let create = tokio::spawn(
        http.post(format!("{base}/reviews"))
            .header("content-type", "application/json")
            .body(
                json!({"product_id": 8, "rating": 4, "summary": "Held", "body": "Sent before the \
                 pod was told to stop, and answered before it did.", "recommend": true,
                 "name": "kubelet", "email": "k@example.com", "photos": [], "characteristics": {}})
                .to_string(),
            )
            .send(),
    );
    let watcher = sql(db_url).await;
    sandbox::wait_until(
        "three calls waiting on the lock",
        Duration::from_secs(3),
        || async {
            let row = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) >= 3
        },
    )
    .await;
    tokio::time::sleep(pre_stop.saturating_sub(terminating.elapsed())).await;
    server.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(server.try_status().is_none(), "exited with calls in flight");
    lock.commit().await.unwrap();

    assert_eq!(grpc_list.await.unwrap().expect("in-flight gRPC call"), 0);
    let meta = meta.await.unwrap().expect("in-flight JSON read");
    assert_eq!(meta.status(), 200);
    let created = create.await.unwrap().expect("in-flight JSON write");
    assert_eq!(created.status(), 201);
    let left = grace.saturating_sub(terminating.elapsed());
    let status = server.wait_for(left).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "did not exit cleanly within the grace period\n{}",
        server.transcript()
    );
    let rows = watcher
        .query_one("SELECT count(*) FROM reviews WHERE product_id = 8", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(rows, 1, "the in-flight create committed");
}

/// Every stderr line is JSON when the environment asks for it, and the last says it stopped.
fn check_logs(server: &Proc, env: &[(String, String)]) {
    let lines = server.stderr();
    if env
        .iter()
        .any(|(k, v)| k == "REVIEWS_LOG_FORMAT" && v == "json")
    {
        for line in &lines {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        }
    }
    assert!(
        lines.last().is_some_and(|l| l.contains("server stopped")),
        "{}",
        server.transcript()
    );
}

async fn deploys_as_rendered(overlay: &str) {
    let image = dockerfile_image();
    let objects = render(overlay);
    let made = operator_objects(&objects);
    let all: Vec<Value> = objects.iter().chain(&made).cloned().collect();
    let deployment = find(&objects, "Deployment", "reviews").expect("no reviews Deployment");
    let job = find(&objects, "Job", "reviews-migrate").expect("no reviews-migrate Job");
    let ns = deployment["metadata"]["namespace"].as_str().unwrap();

    let netns = Netns::new(true);
    let backends = Backends::start(&netns, &format!("deploy-{overlay}")).await;
    let bin = installed_binary(&backends.dir);

    // The Job first, as the README's steps say.
    let job_pod = &job["spec"]["template"]["spec"];
    let mut migrate = pod_start(&all, job_pod, &job_pod["containers"][0], &image);
    let databases = map_hosts(&mut migrate.env, &all, ns, &backends);
    for db in databases.iter().collect::<std::collections::BTreeSet<_>>() {
        reviews::local::create_database(&backends.admin_url(), db, None)
            .await
            .unwrap();
    }
    let writable = writable_places(&migrate, &netns).await;
    assert!(!writable.contains(&migrate.workdir), "{writable:?}");
    if migrate.read_only_root {
        assert!(
            writable.is_empty(),
            "read-only root filesystem: {writable:?}"
        );
    }
    let mut run = launch(&migrate, &image, &netns, &bin);
    assert_eq!(
        run.finish(Duration::from_secs(120)).await,
        0,
        "the Job failed\n{}",
        run.transcript()
    );
    assert!(
        run.stdout().iter().any(|l| l.starts_with("applied ")),
        "{}",
        run.transcript()
    );

    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mut serve = pod_start(&all, pod, container, &image);
    let databases = map_hosts(&mut serve.env, &all, ns, &backends);
    assert_eq!(
        serve
            .env
            .iter()
            .filter(|(k, _)| k.ends_with("_URL"))
            .count(),
        serve
            .env
            .iter()
            .filter(|(_, v)| v.contains(&netns.host.to_string()))
            .count(),
        "every URL reaches a test server: {:?}",
        serve.env.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let writable = writable_places(&serve, &netns).await;
    assert!(!writable.contains(&serve.workdir), "{writable:?}");
    if serve.read_only_root {
        assert!(
            writable.is_empty(),
            "read-only root filesystem: {writable:?}"
        );
    }
    let mut server = launch(&serve, &image, &netns, &bin);
    for kind in ["startupProbe", "readinessProbe", "livenessProbe"] {
        probe_until_success(kind, container, netns.inside, &mut server).await;
    }
    let port = container["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let pod_addr = SocketAddr::from((netns.inside, port));
    let body = reqwest::get(format!("http://{pod_addr}/reviews/meta?product_id=1"))
        .await
        .unwrap();
    assert_eq!(body.status(), 200);

    let lifecycle = &container["lifecycle"]["preStop"];
    let pre_stop = match (
        lifecycle.get("sleep"),
        lifecycle["exec"]["command"].as_array(),
    ) {
        (Some(sleep), _) => seconds(sleep, "seconds", 0),
        (None, Some(cmd)) if cmd[0] == "sleep" => {
            Duration::from_secs(cmd[1].as_str().unwrap().parse().unwrap())
        }
        (None, None) => Duration::ZERO,
        other => panic!("unsupported preStop {other:?}"),
    };
    let grace = seconds(pod, "terminationGracePeriodSeconds", 30);
    let db_url = format!(
        "postgres://reviews@127.0.0.1:{}/{}",
        backends.pg.port(),
        databases[0]
    );
    terminate_with_calls_in_flight(&mut server, pod_addr, &db_url, pre_stop, grace).await;
    check_logs(&server, &serve.env);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_overlay_migrates_serves_passes_its_probes_and_drains() {
    if !sandbox::skip_without_root("the dev overlay's contract") {
        deploys_as_rendered("dev").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_prod_overlay_migrates_serves_passes_its_probes_and_drains() {
    if !sandbox::skip_without_root("the prod overlay's contract") {
        deploys_as_rendered("prod").await;
    }
}

/// `docker run -e DATABASE_URL=... -e REDIS_URL=... IMAGE migrate`, then `docker run ... IMAGE`
/// and `docker stop` (SIGTERM, then SIGKILL after 10 s).
#[tokio::test(flavor = "multi_thread")]
async fn the_image_migrates_serves_on_its_exposed_port_and_stops_on_sigterm() {
    if sandbox::skip_without_root("the image's contract") {
        return;
    }
    let image = dockerfile_image();
    assert_ne!(image.user.0, 0, "the image runs as root");
    let netns = Netns::new(true);
    let backends = Backends::start(&netns, "deploy-image").await;
    let bin = installed_binary(&backends.dir);
    reviews::local::create_database(&backends.admin_url(), "reviews", None)
        .await
        .unwrap();
    let mut env = image.env.clone();
    set(
        &mut env,
        "DATABASE_URL",
        &format!("postgres://reviews@{}/reviews", backends.pg),
    );
    set(
        &mut env,
        "REDIS_URL",
        &format!("redis://{}/", backends.redis),
    );
    let start = |argv: Vec<String>| Start {
        argv,
        env: env.clone(),
        user: image.user,
        read_only_root: false,
        workdir: image.workdir.clone(),
    };
    let migrate = start([image.entrypoint.clone(), vec!["migrate".into()]].concat());
    let writable = writable_places(&migrate, &netns).await;
    assert!(
        !writable.contains(&image.workdir),
        "the image's user can write its working directory"
    );
    let mut run = launch(&migrate, &image, &netns, &bin);
    assert_eq!(
        run.finish(Duration::from_secs(120)).await,
        0,
        "{}",
        run.transcript()
    );

    let serve = start([image.entrypoint.clone(), image.cmd.clone()].concat());
    let mut server = launch(&serve, &image, &netns, &bin);
    let port = *image.exposed.first().expect("the image exposes no port");
    let addr = SocketAddr::from((netns.inside, port));
    sandbox::wait_until(
        "the exposed port serves",
        Duration::from_secs(30),
        || async { grpc_health(addr, "reviews.v1.ReviewService").await == Ok(SERVING) },
    )
    .await;
    for path in ["/healthz", "/readyz", "/reviews/meta?product_id=1"] {
        let resp = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let db_url = format!(
        "postgres://reviews@127.0.0.1:{}/reviews",
        backends.pg.port()
    );
    terminate_with_calls_in_flight(
        &mut server,
        addr,
        &db_url,
        Duration::ZERO,
        Duration::from_secs(10),
    )
    .await;
    check_logs(&server, &serve.env);
}
