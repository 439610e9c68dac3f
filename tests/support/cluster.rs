//! A throwaway PostgreSQL cluster of a test's own, for settings the shared cluster cannot have
//! (`wal_level=replica`, another certificate) or events it must not see (a shutdown). Trust
//! authentication on 127.0.0.1; stopped and deleted when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{as_postgres, is_root, output_plugins_setting, run};

pub struct TempCluster {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl TempCluster {
    /// Creates and starts a cluster with `conf` appended to postgresql.conf, after copying `files`
    /// (name in the data directory, source path) into the data directory, readable by the server
    /// only (so they may be keys).
    pub fn start(conf: &str, files: &[(&str, &Path)]) -> TempCluster {
        let dir = tempfile::Builder::new().prefix("pubsubpull-pg-").tempdir().expect("temp dir");
        if is_root() {
            run(Command::new("chown").arg("postgres").arg(dir.path()));
        }
        let cluster = TempCluster { port: free_port(), dir };
        let data = cluster.data_dir();
        run(as_postgres("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
            .arg(&data));
        for (name, source) in files {
            let target = data.join(name);
            fs::copy(source, &target).expect("copy file into the data directory");
            if is_root() {
                run(Command::new("chown").arg("postgres").arg(&target));
            }
            run(Command::new("chmod").arg("600").arg(&target));
        }
        let mut settings = fs::read_to_string(data.join("postgresql.conf")).expect("read postgresql.conf");
        settings.push_str(&format!(
            "\nport = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n{}{conf}\n",
            cluster.port,
            cluster.dir.path().display(),
            output_plugins_setting()
        ));
        fs::write(data.join("postgresql.conf"), settings).expect("write postgresql.conf");
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(cluster.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null()));
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A superuser URL for `database`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn start_again(&self) {
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null()));
    }

    /// Stops the server with `pg_ctl stop -m mode` and waits for it to be down.
    pub fn stop(&self, mode: &str) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop("immediate");
    }
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
