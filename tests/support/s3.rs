//! A real S3-compatible server on loopback: `s3s-fs` (installed by `scripts/install-deps.sh
//! --test` with `cargo install`), serving a temp directory in which each subdirectory is a
//! bucket and each object is a plain file, so tests can damage stored bytes directly.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "rift-test-key";
pub const SECRET_KEY: &str = "rift-test-secret-0123456789";
/// The bucket every server starts with.
pub const BUCKET: &str = "rift";

/// The s3s-fs binary: on PATH, or where `cargo install` puts it.
pub fn s3s_fs_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    on_path
        .or_else(|| {
            cargo_home
                .map(|h| h.join("bin/s3s-fs"))
                .filter(|p| p.is_file())
        })
        .expect("s3s-fs is not installed: run `bash scripts/install-deps.sh --test`")
}

/// One s3s-fs server; killed on drop.
pub struct S3Server {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server with bucket [`BUCKET`] and waits until it accepts connections.
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("data").join(BUCKET)).unwrap();
        let mut s = S3Server {
            port: super::proc::free_port(),
            dir,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("s3s.log")).unwrap();
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not listen on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("s3s.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The server's root: one directory per bucket, and its multipart parts in progress
    /// (`.upload_id-<id>.part-<n>`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The file holding object `key` of [`BUCKET`].
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join("data").join(BUCKET).join(key)
    }

    /// Where the bytes of Artifact `name` (`sha256-<hex>`) are stored, `cas/sha256/<2>/<hex>`.
    pub fn cas_path(&self, name: &str) -> PathBuf {
        let hex = name.trim_start_matches("sha256-");
        self.object_path(&format!("cas/sha256/{}/{hex}", &hex[..2]))
    }

    /// Stops the server (SIGKILL): the store is down.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): transfers in flight stall, nothing fails yet.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A credentials file (KEY=VALUE lines) in `dir` named `name`, with `secret`.
    pub fn write_credentials(dir: &Path, name: &str, secret: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("AWS_ACCESS_KEY_ID={ACCESS_KEY}\nAWS_SECRET_ACCESS_KEY={secret}\n"),
        )
        .unwrap();
        path
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
