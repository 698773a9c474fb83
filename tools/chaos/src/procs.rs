//! The services as OS processes, supervised the way Kubernetes would: a process that exits is
//! started again after a short back-off. Exits the chaos did not cause are recorded, with the
//! end of the process's log, because a service should retry rather than exit.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::{
    process::{Child, Command},
    sync::Mutex,
};
use tokio_util::sync::CancellationToken;

/// One supervised process.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    restart_at: Option<Instant>,
    pub starts: u32,
    pub kills: u32,
    /// Exits nobody asked for: the status and the last lines of the log.
    pub unexpected_exits: Vec<String>,
}

impl Process {
    pub fn new(
        name: &str,
        bin: PathBuf,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            bin,
            args,
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            restart_at: None,
            starts: 0,
            kills: 0,
            unexpected_exits: Vec::new(),
        }
    }

    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        writeln!(log, "=== palisade-chaos: start #{} ===", self.starts + 1)?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            // Nothing from the harness's own environment (DATABASE_URL, REDIS_URL of the
            // shared servers) may leak into a service.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.starts += 1;
        self.restart_at = None;
        Ok(())
    }

    /// SIGKILL, then start again after `down`.
    pub async fn kill(&mut self, down: Duration) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        self.kills += 1;
        self.restart_at = Some(Instant::now() + down);
        Ok(())
    }

    /// Stops it for good (end of the run).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.restart_at = None;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// One supervision step: note an unexpected exit and schedule the restart; start what is due.
    fn supervise(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited() {
            let tail = self.tail(8);
            tracing::warn!(process = %self.name, %status, "exited by itself; restarting it");
            self.unexpected_exits
                .push(format!("{status} after start #{}:\n{tail}", self.starts));
            self.restart_at = Some(Instant::now() + Duration::from_secs(1));
        }
        if self.child.is_none() && self.restart_at.is_some_and(|at| Instant::now() >= at) {
            self.spawn()?;
        }
        Ok(())
    }
}

/// Every supervised process, behind one lock.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub processes: Arc<Mutex<Vec<Process>>>,
}

impl Fleet {
    pub async fn add(&self, mut process: Process) -> anyhow::Result<()> {
        process.spawn()?;
        self.processes.lock().await.push(process);
        Ok(())
    }

    /// Restarts what exited, every 200 ms, until `stop`.
    pub fn supervise(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                for process in fleet.processes.lock().await.iter_mut() {
                    if let Err(e) = process.supervise() {
                        tracing::error!(process = %process.name, error = %format!("{e:#}"), "cannot restart");
                    }
                }
            }
        })
    }

    pub async fn kill(&self, name: &str, down: Duration) -> anyhow::Result<Option<u32>> {
        let mut processes = self.processes.lock().await;
        let process = processes
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        let pid = process.pid();
        process.kill(down).await?;
        Ok(pid)
    }

    pub async fn stop_all(&self) {
        for process in self.processes.lock().await.iter_mut() {
            process.stop().await;
        }
    }
}
