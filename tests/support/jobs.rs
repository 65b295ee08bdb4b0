//! Jobs on a test agent: created through the store, bound the way the scheduler binds them
//! (placement and binding together), and watched through the agent's runtime reports.

use std::time::Duration;

use etcd_client::Client;
use rift::api::placement::RuntimeReport;
use rift::api::{JobPhase, JobSpec, Object};
use rift::store::Store;

use super::agent::eventually;

/// Creates Job `name` running `sh -c script` (grace 3 s), adjusted by `tune`.
pub async fn create_job(store: &Store, name: &str, script: &str, tune: impl FnOnce(&mut JobSpec)) {
    let mut spec = JobSpec::with_command(["sh", "-c", script]);
    spec.termination_grace_period = rift::api::duration::HumanDuration::from_secs(3);
    tune(&mut spec);
    store.create(&Object::new(name, spec)).await.unwrap();
}

/// Binds `job` to `node` at epoch 1, as the scheduler does.
pub async fn bind(client: &mut Client, job: &str, node: &str) {
    bind_at(client, job, node, 1, &[]).await
}

/// Binds `job` to `node` at `epoch` with `gpus`, as the scheduler does: placement and binding
/// together.
pub async fn bind_at(client: &mut Client, job: &str, node: &str, epoch: u64, gpus: &[u32]) {
    let placement = serde_json::json!({"node": node, "gpus": gpus, "epoch": epoch}).to_string();
    let binding = serde_json::json!({"gpus": gpus, "epoch": epoch}).to_string();
    client
        .put(format!("/rift/v1/placements/{job}"), placement, None)
        .await
        .unwrap();
    client
        .put(format!("/rift/v1/bindings/{node}/{job}"), binding, None)
        .await
        .unwrap();
}

/// Deletes `job`'s binding on `node`, as the scheduler does when it takes a job off a node.
pub async fn unbind(client: &mut Client, job: &str, node: &str) {
    client
        .delete(format!("/rift/v1/bindings/{node}/{job}"), None)
        .await
        .unwrap();
}

/// The runtime report `node`'s agent wrote for `job`.
pub async fn report(client: &mut Client, node: &str, job: &str) -> Option<RuntimeReport> {
    let resp = client
        .get(format!("/rift/v1/agents/{node}/jobs/{job}"), None)
        .await
        .ok()?;
    serde_json::from_slice(resp.kvs().first()?.value()).ok()
}

/// Waits until `node` reports `job` in `phase`, and returns that report.
pub async fn wait_phase(
    client: &Client,
    node: &str,
    job: &str,
    phase: JobPhase,
    within: Duration,
) -> RuntimeReport {
    eventually(within, &format!("{job} {phase:?}"), || {
        let mut c = client.clone();
        async move { report(&mut c, node, job).await.filter(|r| r.phase == phase) }
    })
    .await
}
