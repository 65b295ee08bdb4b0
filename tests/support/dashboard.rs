//! A real `rift dashboard` process against a test cluster, on a free loopback port.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::cli::{rift_command, KillOnDrop};
use super::proc::free_port;

pub struct TestDashboard {
    pub addr: String,
    process: KillOnDrop,
}

impl TestDashboard {
    /// Starts `rift dashboard` reading `endpoints` and waits until it answers `/healthz`.
    pub fn start(endpoints: &str) -> TestDashboard {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = rift_command(endpoints, &["dashboard", "--listen", &addr])
            // glibc gives each busy thread an arena of its own that grows to its peak once
            // (tens of MiB at a time, whenever the scheduler first runs a task on another
            // worker): the memory tests look for growth with changes, not for that.
            .env("MALLOC_ARENA_MAX", "2")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the rift binary runs");
        let d = TestDashboard {
            addr,
            process: KillOnDrop(child),
        };
        let start = Instant::now();
        while super::http::get(&d.addr, "/healthz", Duration::from_secs(1)).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the dashboard did not answer within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}
