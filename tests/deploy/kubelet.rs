//! Starting a container and probing it, as the kubelet (or a container runtime) does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::sandbox::{self, grpc_health, Confinement, Netns, Proc, SERVING};
use crate::image::Image;
use crate::manifests::container_env;

/// How the runtime starts one container.
#[derive(Debug)]
pub struct Start {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: (u32, u32),
    pub read_only_root: bool,
    pub workdir: String,
}

/// `command`/`args` over the image's `ENTRYPOINT`/`CMD`, as Kubernetes combines them.
pub fn argv(container: &Value, image: &Image) -> Vec<String> {
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

pub fn pod_start(objects: &[Value], pod: &Value, container: &Value, image: &Image) -> Start {
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
pub fn installed_binary(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin/reviews");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(sandbox::BIN, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

pub fn launch(start: &Start, image: &Image, netns: &Netns, bin: &Path) -> Proc {
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

pub fn confinement<'a>(start: &Start, netns: &'a Netns) -> Confinement<'a> {
    Confinement {
        netns: Some(netns),
        user: Some(start.user),
        read_only_root: start.read_only_root,
    }
}

/// The process cannot write its working directory, nor anything at all on a read-only root.
pub async fn assert_confined(start: &Start, netns: &Netns) {
    let writable = writable_places(start, netns).await;
    assert!(
        !writable.contains(&start.workdir),
        "it can write {writable:?}"
    );
    if start.read_only_root {
        assert!(
            writable.is_empty(),
            "read-only root, yet it can write {writable:?}"
        );
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

pub fn seconds(v: &Value, field: &str, default: u64) -> Duration {
    Duration::from_secs(v[field].as_u64().unwrap_or(default))
}

pub fn port_of(port: &Value, container: &Value) -> u16 {
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

pub async fn probe_once(probe: &Value, container: &Value, pod_ip: Ipv4Addr) -> Result<(), String> {
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
pub async fn probe_until_success(
    kind: &str,
    container: &Value,
    pod_ip: Ipv4Addr,
    server: &mut Proc,
) {
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
