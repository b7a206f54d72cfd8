//! Throwaway PostgreSQL and Redis servers on free loopback ports, for `reviews dev` and the test
//! harness. They use the machine's server binaries, keep their data in a folder of the caller's,
//! and are killed with the thread that started them.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const PG_HINT: &str = "PostgreSQL server binaries (initdb, postgres, pg_isready) were not found: \
    install them (Debian: `apt-get install -y postgresql`) or set REVIEWS_PG_BIN to their folder";
const REDIS_HINT: &str =
    "redis-server was not found: install it (Debian: `apt-get install -y redis-server`)";

/// A PostgreSQL cluster in a folder of its own, tuned for throwaway data (no fsync).
pub struct LocalPostgres {
    bin: PathBuf,
    root: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    /// Extra `-c` settings.
    settings: Vec<String>,
}

impl LocalPostgres {
    /// Creates a cluster under `root` (a new or empty folder) with a superuser `reviews`.
    pub fn init(root: &Path) -> anyhow::Result<Self> {
        let (bin, owner) = prepare(root)?;
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.args(["-U", "reviews", "-A", "trust", "-E", "UTF8", "--locale=C"]);
        initdb.args(["--no-sync", "--no-instructions", "-D"]);
        initdb.arg(root.join("data"));
        run_as(&mut initdb, owner);
        let out = initdb.output().context("could not run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self {
            bin,
            root: root.to_path_buf(),
            port: 0,
            owner,
            child: None,
            settings: Vec::new(),
        })
    }

    /// A streaming replica of the server on `primary_port`, created under `root` (a new or empty
    /// folder), that applies the primary's changes only `apply_delay` after they happen: a
    /// replica that lags on purpose.
    pub fn replica(root: &Path, primary_port: u16, apply_delay: Duration) -> anyhow::Result<Self> {
        let (bin, owner) = prepare(root)?;
        let mut backup = Command::new(bin.join("pg_basebackup"));
        backup.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            "reviews",
        ]);
        backup.args(["-X", "stream", "-R", "--no-sync", "-D"]);
        backup.arg(root.join("data"));
        run_as(&mut backup, owner);
        let out = backup.output().context("could not run pg_basebackup")?;
        if !out.status.success() {
            bail!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            bin,
            root: root.to_path_buf(),
            port: 0,
            owner,
            child: None,
            settings: vec![format!(
                "recovery_min_apply_delay={}ms",
                apply_delay.as_millis()
            )],
        })
    }

    /// Also listens on `addr` (besides loopback) and trusts connections from `client` there: for
    /// a client in a network namespace of its own, as a pod is. Call before `start`.
    pub fn listen_also(&mut self, addr: Ipv4Addr, client: Ipv4Addr) -> anyhow::Result<()> {
        use std::io::Write;
        // A later `-c` wins over the loopback-only default set in `start`.
        self.settings
            .push(format!("listen_addresses=127.0.0.1,{addr}"));
        let hba = self.root.join("data/pg_hba.conf");
        let mut file = fs::OpenOptions::new().append(true).open(&hba)?;
        writeln!(file, "host all all {client}/32 trust")?;
        Ok(())
    }

    /// Starts the server on a free port and waits until it accepts connections.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.port == 0 {
            self.port = free_port()?;
        }
        let log = fs::File::create(self.root.join("postgres.log"))?;
        if let Some((uid, gid)) = self.owner {
            chown(self.root.join("postgres.log"), Some(uid), Some(gid))?;
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D").arg(self.root.join("data"));
        cmd.args(["-p", &self.port.to_string()]);
        for setting in [
            "listen_addresses=127.0.0.1",
            "unix_socket_directories=",
            "max_connections=200",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            "shared_buffers=128MB",
        ] {
            cmd.args(["-c", setting]);
        }
        for setting in &self.settings {
            cmd.args(["-c", setting]);
        }
        cmd.stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null());
        run_as(&mut cmd, self.owner);
        die_with_parent(&mut cmd, libc::SIGQUIT);
        let mut child = cmd.spawn().context("could not start postgres")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("postgres exited with {status}: {}", self.log_tail());
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()?;
            if ready.success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("postgres did not become ready: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server at once (clients are disconnected); `start` brings it back on the same
    /// port with the same data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT: fast shutdown, which rolls back open transactions and exits cleanly.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://reviews@127.0.0.1:{}/{db}", self.port)
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

/// The server binaries, and `root` made and handed to the account the server will run as.
fn prepare(root: &Path) -> anyhow::Result<(PathBuf, Option<(u32, u32)>)> {
    let bin = postgres_bin_dir().context(PG_HINT)?;
    fs::create_dir_all(root)?;
    // PostgreSQL refuses to run as root; under root it runs as an unprivileged account.
    let owner = unprivileged_owner()?;
    if let Some((uid, gid)) = owner {
        chown(root, Some(uid), Some(gid))?;
    }
    Ok((bin, owner))
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server without persistence.
pub struct LocalRedis {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Addresses it listens on besides loopback.
    also: Option<Ipv4Addr>,
    child: Option<Child>,
}

impl LocalRedis {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_on(dir, None)
    }

    /// Like `start`, listening on `also` besides loopback.
    pub fn start_on(dir: &Path, also: Option<Ipv4Addr>) -> anyhow::Result<Self> {
        let bin = which("redis-server").context(REDIS_HINT)?;
        fs::create_dir_all(dir)?;
        let mut redis = Self {
            bin,
            dir: dir.to_path_buf(),
            port: free_port()?,
            also,
            child: None,
        };
        redis.restart()?;
        Ok(redis)
    }

    /// Starts the server (again, after `stop`) on its port, empty, and waits until it answers.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
        if let Some(addr) = self.also {
            cmd.arg(addr.to_string());
        }
        cmd.args(["--save", "", "--appendonly", "no", "--protected-mode", "no"]);
        cmd.arg("--dir").arg(&self.dir);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        die_with_parent(&mut cmd, libc::SIGTERM);
        let mut child = cmd.spawn().context("could not start redis-server")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !redis_answers(self.port) {
            if let Some(status) = child.try_wait()? {
                bail!("redis-server exited with {status}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("redis-server did not become ready on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server; its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (`true`) or thaws the server: connections stay open but nothing is answered.
    pub fn freeze(&self, frozen: bool) {
        if let Some(child) = &self.child {
            let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.freeze(false);
        self.stop();
    }
}

fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// A port that was free a moment ago.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// The newest `/usr/lib/postgresql/<version>/bin`, `REVIEWS_PG_BIN`, or the folder of
/// `postgres` on the PATH.
fn postgres_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("REVIEWS_PG_BIN") {
        return Some(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .or_else(|| which("postgres")?.parent().map(Path::to_path_buf))
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether the PostgreSQL server binaries can be found.
pub fn postgres_available() -> bool {
    postgres_bin_dir().is_some()
}

/// Under root, the uid and gid of `postgres` (or else `nobody`); otherwise `None`.
fn unprivileged_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    for name in [c"postgres", c"nobody"] {
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Ok(Some((uid, gid)));
        }
    }
    bail!(
        "running as root, and neither a `postgres` nor a `nobody` account exists to run PostgreSQL"
    )
}

fn run_as(cmd: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}

/// Has the child receive `signal` when the thread that spawned it ends, so a crashed or
/// killed test run leaves no servers behind.
fn die_with_parent(cmd: &mut Command, signal: i32) {
    // SAFETY: prctl is async-signal-safe and touches only the child being exec'd.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Creates database `name` on the server at `admin_url`, copied from `template` when given.
pub async fn create_database(
    admin_url: &str,
    name: &str,
    template: Option<&str>,
) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    let sql = match template {
        Some(t) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{t}\" STRATEGY FILE_COPY"),
        None => format!("CREATE DATABASE \"{name}\""),
    };
    client.batch_execute(&sql).await?;
    drop(client);
    let _ = task.await;
    Ok(())
}
