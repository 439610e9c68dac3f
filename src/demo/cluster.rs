//! A throwaway PostgreSQL cluster for the demo, from the installed server binaries: created in a
//! temporary directory with `wal_level=logical`, listening on a free loopback port with trust
//! authentication, stopped and deleted when dropped. PostgreSQL refuses to run as root, so as root
//! the server runs as the `postgres` OS user.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub struct Cluster {
    bindir: PathBuf,
    /// Holds the data directory and the log; deleted with the cluster.
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Cluster {
    /// Creates and starts the cluster; `bindir` is where initdb and pg_ctl are (found when None).
    pub fn start(bindir: Option<PathBuf>) -> anyhow::Result<Cluster> {
        let bindir = match bindir {
            Some(dir) => dir,
            None => find_bindir().context(
                "no PostgreSQL server binaries found: install them (Debian: apt-get install postgresql-15) \
                 or name their directory with --pg-bindir",
            )?,
        };
        let dir = tempfile::Builder::new().prefix("pubsubpull-demo.").tempdir()?;
        if is_root() {
            // The server's user must own its directory.
            let status = Command::new("chown").arg("postgres").arg(dir.path()).status()?;
            if !status.success() {
                bail!("running as root, the demo runs PostgreSQL as the postgres OS user, which is missing");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cluster = Cluster { bindir, dir, port };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &["-D", path(&data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale", "C"],
        )?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c fsync=off",
            path(cluster.dir.path())
        );
        let log = cluster.dir.path().join("server.log");
        cluster.pg("pg_ctl", &["-D", path(&data), "-l", path(&log), "-w", "-o", &options, "start"])?;
        Ok(cluster)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs (as `postgres` when we are root).
    fn pg(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let executable = self.bindir.join(program);
        let mut command = if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&executable);
            command
        } else {
            Command::new(&executable)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", executable.display()))?;
        if !output.status.success() {
            bail!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        if let Err(error) = self.pg("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"]) {
            eprintln!("warning: stopping the demo's PostgreSQL: {error:#}");
        }
    }
}

/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin` with initdb.
fn find_bindir() -> Option<PathBuf> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && has_initdb(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_initdb(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// Whether we run as root: `/proc/self` belongs to the process's effective user.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}
