//! Running the built binary the way it is shipped: in a network namespace of its own (as a pod
//! or a container gets), as an unprivileged user, on a read-only root filesystem; and reading what
//! it prints. Needs root, as CI has.

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test, as cargo built it.
pub const BIN: &str = env!("CARGO_BIN_EXE_reviews");

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root may skip: only outside CI (which runs as root) and when this
/// process is not root. Says so on stderr when it skips.
pub fn skip_without_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (network namespaces, another user id)"
    );
    eprintln!("skipped {test}: it needs root (network namespaces, another user id)");
    true
}

/// Runs `cmd` to its end; fails the test, with its stderr, unless it succeeds. Returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `reviews serve` on a free loopback port, on database `db`, caching in the harness' Redis
/// under `prefix`, with pools of 4, and `extra` flags.
pub fn serve(db: &str, prefix: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--database-url", db])
        .args([
            "--redis-url",
            &super::cluster().redis_url,
            "--cache-prefix",
            prefix,
        ])
        .args(["--db-pool-size", "4"])
        .args(extra);
    cmd
}

/// Spawns `cmd`, a `reviews serve`, and waits until it serves; returns it and its address.
pub async fn started(cmd: &mut Command) -> (Proc, std::net::SocketAddr) {
    let mut server = Proc::spawn(cmd);
    let line = server
        .stderr_line("serving gRPC", Duration::from_secs(30))
        .await;
    let addr = served_addr(&line);
    (server, addr)
}

/// SIGTERM to a `reviews serve`: it must exit 0 within 15 s, saying it stopped.
pub async fn stop(mut server: Proc) {
    server.signal(libc::SIGTERM);
    assert_eq!(
        server.finish(Duration::from_secs(15)).await,
        0,
        "{}",
        server.transcript()
    );
    assert!(server.stderr().iter().any(|l| l.contains("server stopped")));
}

/// POSTs `review` as JSON to `/reviews`, with `headers`.
pub async fn post_review(
    addr: std::net::SocketAddr,
    headers: &[(&str, &str)],
    review: &serde_json::Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("http://{addr}/reviews"))
        .header("content-type", "application/json")
        .body(review.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// One gRPC-Web (binary) frame holding `message`: flag 0, length, message.
pub fn grpc_web_frame(message: &impl prost::Message) -> Vec<u8> {
    let message = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// The objects of a kustomize overlay (`k8s/overlays/<overlay>`), as `kubectl kustomize`
/// renders them.
pub fn render(overlay: &str) -> Vec<serde_json::Value> {
    let text = run_ok(
        Command::new("kubectl")
            .args(["kustomize", &format!("k8s/overlays/{overlay}")])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    // kustomize separates the documents with `---` lines.
    format!("\n{text}")
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str::<serde_json::Value>(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

/// A network namespace of this test's own, with loopback up and, on request, a veth pair whose
/// ends are `host` (in this machine's namespace) and `inside`. Deleted on drop, with its veth.
pub struct Netns {
    pub name: String,
    pub host: Ipv4Addr,
    pub inside: Ipv4Addr,
    file: std::fs::File,
}

impl Netns {
    pub fn new(with_veth: bool) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        remove_stale_namespaces();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rv{pid}-{k}");
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        // A /30 per namespace; only this namespace and this machine ever use it.
        let (a, b) = ((pid % 250) as u8, (4 * (k % 64)) as u8);
        let host = Ipv4Addr::new(10, 251, a, b + 1);
        let inside = Ipv4Addr::new(10, 251, a, b + 2);
        if with_veth {
            let (outer, inner) = (format!("rvh{}x{k}", pid % 100_000), "eth0".to_string());
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &name,
            ]);
            ip(&["addr", "add", &format!("{host}/30"), "dev", &outer]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{inside}/30"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &name, "link", "set", &inner, "up"]);
        }
        let file = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        Self {
            name,
            host,
            inside,
            file,
        }
    }

    /// Runs `f` on a thread of its own inside the namespace, with a runtime of its own: every
    /// socket it opens is the namespace's, as a client in the pod would be.
    pub async fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let fd = self.file.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            let entered = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .await
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Deletes the namespaces left by test processes that died.
fn remove_stale_namespaces() {
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("rv")
            .and_then(|r| r.split('-').next()?.parse::<i32>().ok());
        if let Some(pid) = pid {
            if unsafe { libc::kill(pid, 0) } != 0 {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    }
}

/// How a process is confined, as a container runtime would.
#[derive(Default)]
pub struct Confinement<'a> {
    pub netns: Option<&'a Netns>,
    /// User and group id to run as.
    pub user: Option<(u32, u32)>,
    /// Every mount of this machine read-only (in a mount namespace of the process's own),
    /// except /proc, /sys and /dev.
    pub read_only_root: bool,
}

impl Confinement<'_> {
    /// Applies itself to `cmd` in the child, between fork and exec.
    pub fn apply(&self, cmd: &mut Command) {
        let netns = self.netns.map(|n| n.file.try_clone().unwrap());
        let user = self.user;
        let mounts = if self.read_only_root {
            mount_points()
        } else {
            Vec::new()
        };
        let read_only_root = self.read_only_root;
        // SAFETY: between fork and exec the closure makes only system calls on values prepared
        // before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                if let Some(fd) = &netns {
                    check(libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET))?;
                }
                if read_only_root {
                    check(libc::unshare(libc::CLONE_NEWNS))?;
                    let none = std::ptr::null();
                    let root = c"/".as_ptr();
                    check(libc::mount(
                        none,
                        root,
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    for mp in &mounts {
                        let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
                        let rc = libc::mount(none, mp.as_ptr(), none, flags, std::ptr::null());
                        if mp.as_bytes() == b"/" {
                            check(rc)?;
                        }
                    }
                }
                if let Some((uid, gid)) = user {
                    check(libc::setgroups(0, std::ptr::null()))?;
                    check(libc::setgid(gid))?;
                    check(libc::setuid(uid))?;
                }
                // After setuid, which clears it: the process dies with the test.
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                Ok(())
            });
        }
    }
}

/// This machine's mount points, but those under /proc, /sys and /dev, which a container gets
/// of its own.
fn mount_points() -> Vec<CString> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut points: Vec<CString> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| {
            !["/proc", "/sys", "/dev"]
                .iter()
                .any(|s| p == s || p.starts_with(&format!("{s}/")))
        })
        .map(|p| CString::new(p).unwrap())
        .collect();
    points.dedup();
    points
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(p: &str) -> String {
    let mut out = String::new();
    let mut rest = p;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c as char);
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A running process of the binary, its stdout and stderr collected line by line. Killed on
/// drop.
pub struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        let mut readers = Vec::new();
        let mut collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            }));
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything printed so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout().join("\n"),
            self.stderr().join("\n")
        )
    }

    /// The first stderr line containing `needle`, waiting for it up to `timeout`.
    pub async fn stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "exited ({status}) before printing {needle:?}\n{}",
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {timeout:?}\n{}",
                self.transcript()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exit status once the process has exited; by then its output is all collected (up
    /// to a second, in case a process it started still holds the pipes).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
            if self.status.is_some() {
                let deadline = Instant::now() + Duration::from_secs(1);
                while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        self.status
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for the process to exit, up to `timeout`; `None` if it is still running.
    pub async fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.try_status()
    }

    /// Runs to the end (up to `timeout`) and returns the exit code.
    pub async fn finish(&mut self, timeout: Duration) -> i32 {
        match self.wait_for(timeout).await {
            Some(status) => status.code().unwrap_or(-1),
            None => panic!("still running after {timeout:?}\n{}", self.transcript()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in a `serving gRPC, gRPC-Web and JSON` log line (text or JSON format).
pub fn served_addr(line: &str) -> std::net::SocketAddr {
    let start = line.find("addr").expect("no addr in the line") + "addr".len();
    line[start..]
        .trim_start_matches(['=', '"', ':'])
        .split(|c: char| c == '"' || c.is_whitespace() || c == ',')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// The bytes the legacy API answers for `GET /reviews/meta?product_id=1` on the sample data.
pub fn golden_meta_of_product_1() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/meta_product_1.json"),
    )
    .unwrap()
}

/// A gRPC health check of `service`, as the kubelet's gRPC probe makes it (one second).
pub async fn grpc_health(addr: std::net::SocketAddr, service: &str) -> Result<i32, String> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let call = async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(reply.into_inner().status)
    };
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .map_err(|_| "timed out".to_string())?
}

pub const SERVING: i32 = 1;

/// Polls until `check` holds, up to `timeout`; panics naming `what` otherwise.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON body of a GET that must succeed.
pub async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    let text = get_text(http, url).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

/// Every characteristic of a product's meta (its JSON answer) rated `value`: what a
/// CreateReview of that product must send as `characteristics`.
pub fn rate_all(
    meta: &serde_json::Value,
    value: i32,
) -> serde_json::Map<String, serde_json::Value> {
    meta["characteristics"]
        .as_object()
        .expect("a meta answer")
        .values()
        .map(|c| (c["id"].to_string(), serde_json::json!(value)))
        .collect()
}

/// The body of a GET that must succeed.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let resp = http.get(url).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
    resp.text().await.unwrap()
}

/// What a user of a server on the sample data checks first: it is live and ready (gRPC health
/// and the HTTP probes), and answers product 1's meta over JSON (the legacy bytes) and gRPC.
pub async fn answers_json_grpc_and_health(addr: std::net::SocketAddr) {
    wait_until("ready", Duration::from_secs(30), || async {
        grpc_health(addr, "reviews.v1.ReviewService").await == Ok(SERVING)
    })
    .await;
    for service in ["", "liveness", "reviews.v1.ReviewService"] {
        assert_eq!(grpc_health(addr, service).await, Ok(SERVING), "{service:?}");
    }
    let http = reqwest::Client::new();
    for probe in ["healthz", "readyz"] {
        let resp = http
            .get(format!("http://{addr}/{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "/{probe}");
    }
    let body = get_text(&http, &format!("http://{addr}/reviews/meta?product_id=1")).await;
    assert_eq!(body, golden_meta_of_product_1());
    let meta =
        reviews::pb::review_service_client::ReviewServiceClient::new(super::channel(addr).await)
            .get_review_meta(reviews::pb::GetReviewMetaRequest { product_id: 1 })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(meta.characteristics.len(), 4);
    assert_eq!(meta.ratings.values().sum::<i64>(), 2);
}
