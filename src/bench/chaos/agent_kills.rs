//! `rift bench chaos agent-kills`: a worker's agent is SIGKILLed every second for `--seconds`
//! (60 by default) and started again at once, as systemd's `Restart=always` would, while it
//! runs `--jobs` jobs (50 by default).
//!
//! Cluster: one etcd member; a controller agent (`ctl`, cordoned) and one worker `w1`. Half the
//! jobs are `wait`, half `reschedule` with `lostAfter: 10s`; all run until stopped. Every
//! shim outlives every agent, so no job may ever be stopped or started again.
//!
//! Figures: each restart → the new agent's first lease renewal (its heartbeat file bumped: what
//! the shims of `reschedule` jobs watch), and how many restarts were killed before renewing.
//! Recovery: the last restart → every job converged.

use std::time::{Duration, Instant};

use serde_json::json;

use super::bed::Bed;
use super::{ms, ChaosArgs, ChaosScenario, Outcome};
use crate::bench::report::Spread;
use crate::bench::{BenchError, Common};
use crate::faults::invariants::Tracked;

const LOST_AFTER: Duration = Duration::from_secs(10);
const PERIOD: Duration = Duration::from_secs(1);

pub async fn run(args: &ChaosArgs, common: &Common) -> Result<Outcome, BenchError> {
    let seconds = args.seconds.unwrap_or(60).max(1);
    let jobs = args.jobs.unwrap_or(50).max(1);
    let ttl = common.lease_ttl;
    let mut bed = Bed::controller_and_worker("agent-kills", ttl, common.timeout).await?;
    for i in 0..jobs {
        let name = format!("job-{i:03}");
        let mut spec = bed.real_job(&name, None);
        if i % 2 == 1 {
            Bed::reschedule(&mut spec, LOST_AFTER);
        }
        bed.create(&name, spec, &[], Tracked::steady()).await?;
    }
    let bound = Duration::from_secs(30 + 2 * ttl);
    bed.settle(bound + Duration::from_secs(jobs as u64 / 2))
        .await?;

    let mut out = Outcome::new(ChaosScenario::AgentKills, bound);
    out.setup = format!(
        "etcd x1; ctl (controllers) + worker w1 running {jobs} jobs (half wait, half reschedule with lostAfter {} s); w1's agent SIGKILLed every {} s for {seconds} s and restarted at once; lease TTL {ttl} s",
        LOST_AFTER.as_secs(),
        PERIOD.as_secs()
    );
    out.setup_json = json!({"jobs": jobs, "seconds": seconds, "period_s": PERIOD.as_secs(), "lost_after_s": LOST_AFTER.as_secs(), "ttl_s": ttl});
    out.recovery = "last restart -> every job Running with one live instance".into();

    let heartbeat = bed.agent("w1").state.join("agent.heartbeat");
    let (mut renewed, mut killed_first) = (Vec::new(), 0usize);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let w1 = bed.agent("w1");
        w1.kill();
        let before = std::fs::read(&heartbeat).unwrap_or_default();
        w1.start()?;
        let started = Instant::now();
        out.fault("agent-sigkill");
        let mut seen = None;
        while started.elapsed() < PERIOD {
            if std::fs::read(&heartbeat).unwrap_or_default() != before {
                seen = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match seen {
            Some(d) => renewed.push(ms(d)),
            None => killed_first += 1,
        }
        tokio::time::sleep(PERIOD.saturating_sub(started.elapsed())).await;
    }
    let r = Spread::of(renewed);
    out.row(
        "first_renewal",
        format!(
            "restart -> first lease renewal: {} ({killed_first} restarts killed before renewing)",
            r.show()
        ),
        json!({"spread": r.json(), "killed_before_renewing": killed_first}),
    );
    if let Some(d) = bed.checkpoint("the last restart", bound).await {
        out.recovery_ms.push(ms(d));
    }
    out.violations = bed.violations(bound).await;
    out.operations = bed.operations;
    if args.keep {
        out.kept = Some(bed.keep());
    }
    Ok(out)
}
