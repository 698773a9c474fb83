//! The harness's own Postgres cluster and Redis server, in its work directory on free ports,
//! so that it can kill and restart them without touching the shared servers other tests use.
//! It must never stop, restart or write to any server it did not start itself.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// A loopback port nobody listens on now, below the ephemeral range (32768 and up on Linux),
/// so that outgoing connections of parallel tests do not take it between check and use.
pub fn free_port() -> anyhow::Result<u16> {
    free_ports(1).map(|p| p[0])
}

/// `n` consecutive free ports (ms-sim listens on a base port and the ones after it).
pub fn free_ports(n: u16) -> anyhow::Result<Vec<u16>> {
    for _ in 0..200 {
        let base = 20_000 + (uuid::Uuid::new_v4().as_u128() % 12_000) as u16;
        let ports: Vec<u16> = (base..base + n).collect();
        let all_free = ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok());
        if all_free {
            return Ok(ports);
        }
    }
    bail!("no {n} consecutive free ports found between 20000 and 32000")
}

/// Finds a Postgres server binary as scripts/test-services.sh does: on PATH, else in the usual
/// install directories.
fn find_pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        versions.reverse();
        dirs.extend(versions);
    }
    dirs.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
        ]
        .iter()
        .map(PathBuf::from),
    );
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no `{name}` found: install PostgreSQL (Debian/Ubuntu: apt-get install postgresql)"
            )
        })
}

async fn running_as_root() -> bool {
    match Command::new("id").arg("-u").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim() == "0",
        Err(_) => false,
    }
}

/// A Postgres cluster of our own. initdb and postgres refuse to run as root, so as root every
/// command runs as the `postgres` system user (as scripts/test-services.sh does).
#[derive(Debug)]
pub struct Postgres {
    pg_ctl: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// initdb into `dir/pg` and start it.
    pub async fn create(dir: &Path) -> anyhow::Result<Self> {
        let initdb = find_pg_bin("initdb")?;
        let pg_ctl = find_pg_bin("pg_ctl")?;
        let as_postgres_user = running_as_root().await;
        let pg = Self {
            pg_ctl,
            data: dir.join("pg"),
            socket_dir: dir.to_path_buf(),
            log: dir.join("postgres.log"),
            port: free_port()?,
            as_postgres_user,
        };
        if as_postgres_user {
            let status = Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir)
                .status()
                .await?;
            if !status.success() {
                bail!("running as root needs a `postgres` system user to own the cluster");
            }
        }
        let out = pg
            .command(&initdb)
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .await
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        pg.start().await?;
        Ok(pg)
    }

    fn command(&self, bin: &Path) -> Command {
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        // fsync off: the harness kills processes, not the machine, so the OS page cache keeps
        // every write that returned; durability against power loss is not what this tests.
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.socket_dir.display()
        );
        let out = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .output()
            .await
            .context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed: {} (see {})",
                String::from_utf8_lossy(&out.stderr),
                self.log.display()
            );
        }
        Ok(())
    }

    /// `pg_ctl -m immediate stop`: every backend dies at once without a checkpoint, as in a
    /// crash; the next start replays the WAL.
    pub async fn stop_immediate(&self) -> anyhow::Result<()> {
        let out = self
            .command(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .await
            .context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A Redis server of our own with the append-only file on, as production runs it.
#[derive(Debug)]
pub struct Redis {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub async fn create(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self {
            dir,
            port: free_port()?,
            child: None,
        };
        redis.start().await?;
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (Debian/Ubuntu: apt-get install redis-server)")?;
        self.child = Some(child);
        // It answers once the AOF is loaded.
        let client = redis::Client::open(self.url())?;
        for _ in 0..300 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("redis-server on port {} did not answer", self.port)
    }

    /// SIGKILL: whatever reached the AOF (written before each reply) survives.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }
}

impl Drop for Postgres {
    /// Never leave a cluster behind, even when the run fails half-way.
    fn drop(&mut self) {
        let mut cmd = if self.as_postgres_user {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            c
        } else {
            std::process::Command::new(&self.pg_ctl)
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
