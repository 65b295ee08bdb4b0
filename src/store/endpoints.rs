//! Keeping a client with several etcd endpoints on the ones that answer.
//!
//! etcd-client balances requests over every endpoint it was given (tower's power-of-two-choices
//! over lazily connected tonic channels): a lazy channel reports itself ready before it has
//! connected, so an endpoint that refuses connections, or hangs, or is something other than
//! etcd, still gets its share of requests, and each of those fails (or waits out the connect
//! timeout) — measured here: with a refusing endpoint first, about every other `rift` command
//! failed. So each endpoint is probed on its own (a gRPC read with a short timeout): only
//! endpoints that answer stay in the balance, and one that answers again is put back. The
//! balance is never left empty: when none answers, all are in, so errors name them all and the
//! first to come back is used.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::access::Access;
use super::keys;

/// How long one endpoint may take to answer a probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often every endpoint is probed.
pub const PROBE_EVERY: Duration = Duration::from_secs(3);

/// A change to the set of endpoints in the balance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Add(usize),
    Remove(usize),
}

/// What to change given which endpoints are in the balance and which answered. Pure.
pub fn plan(in_balance: &[bool], answered: &[bool]) -> Vec<Change> {
    let any_answered = answered.iter().any(|a| *a);
    in_balance
        .iter()
        .zip(answered)
        .enumerate()
        .filter_map(|(i, (&inside, &ok))| {
            let want = ok || !any_answered;
            match (inside, want) {
                (false, true) => Some(Change::Add(i)),
                (true, false) => Some(Change::Remove(i)),
                _ => None,
            }
        })
        .collect()
}

/// Options for the one-endpoint probe clients (with the store's TLS identity).
fn probe_options(access: &Access) -> ConnectOptions {
    access.options(
        ConnectOptions::new()
            .with_connect_timeout(PROBE_TIMEOUT)
            .with_timeout(PROBE_TIMEOUT),
    )
}

/// A one-endpoint client for probing `url` (connected lazily; `None` if the URL is unusable).
async fn probe_client(access: &Access, url: &str) -> Option<Client> {
    Client::connect([url], Some(probe_options(access)))
        .await
        .ok()
}

/// True when `client` answers a count-only read within [`PROBE_TIMEOUT`].
async fn answers(client: &mut Client) -> bool {
    let read = client.get(keys::LEADER, Some(GetOptions::new().with_count_only()));
    matches!(tokio::time::timeout(PROBE_TIMEOUT, read).await, Ok(Ok(_)))
}

/// Probes every endpoint at once; returns the probe clients (for reuse) and who answered.
pub async fn probe_all(access: &Access) -> (Vec<Option<Client>>, Vec<bool>) {
    let probes = access.endpoints().iter().map(|u| async move {
        let mut c = probe_client(access, u).await;
        let ok = match c.as_mut() {
            Some(c) => answers(c).await,
            None => false,
        };
        (c, ok)
    });
    futures::future::join_all(probes).await.into_iter().unzip()
}

/// The endpoints a store should use: the configured ones plus any learned later (every
/// voter's client URLs). The health task follows changes on its next round.
#[derive(Clone, Debug, Default)]
pub struct EndpointSet(Arc<Mutex<Vec<String>>>);

impl EndpointSet {
    pub fn new(urls: Vec<String>) -> Self {
        EndpointSet(Arc::new(Mutex::new(urls)))
    }
    pub fn get(&self) -> Vec<String> {
        self.0.lock().expect("endpoint set lock").clone()
    }
    pub fn set(&self, urls: Vec<String>) {
        *self.0.lock().expect("endpoint set lock") = urls;
    }
}

/// One endpoint the health task knows.
struct Tracked {
    url: String,
    in_balance: bool,
    probe: Option<Client>,
}

/// Keeps `client`'s balance on the endpoints of `set` that answer until `alive` is gone
/// (every handle on the store dropped). Endpoints that leave `set` leave the balance; new ones
/// join it once they answer.
pub fn spawn_health(
    client: Client,
    access: Access,
    set: EndpointSet,
    in_balance: Vec<bool>,
    probes: Vec<Option<Client>>,
    alive: Weak<()>,
) {
    let mut tracked: Vec<Tracked> = set
        .get()
        .into_iter()
        .zip(in_balance)
        .zip(probes)
        .map(|((url, in_balance), probe)| Tracked {
            url,
            in_balance,
            probe,
        })
        .collect();
    tokio::spawn(async move {
        loop {
            if alive.upgrade().is_none() {
                return;
            }
            follow(&client, &set.get(), &mut tracked).await;
            let access = &access;
            let checks = tracked.iter_mut().map(|t| async move {
                if t.probe.is_none() {
                    t.probe = probe_client(access, &t.url).await;
                }
                match t.probe.as_mut() {
                    Some(c) => answers(c).await,
                    None => false,
                }
            });
            let answered: Vec<bool> = futures::future::join_all(checks).await;
            let in_balance: Vec<bool> = tracked.iter().map(|t| t.in_balance).collect();
            for change in plan(&in_balance, &answered) {
                let (i, done) = match change {
                    Change::Add(i) => (i, client.add_endpoint(&tracked[i].url).await.is_ok()),
                    Change::Remove(i) => (i, client.remove_endpoint(&tracked[i].url).await.is_ok()),
                };
                if done {
                    let t = &mut tracked[i];
                    t.in_balance = !t.in_balance;
                    tracing::info!(
                        endpoint = %t.url,
                        answering = t.in_balance,
                        "etcd endpoint {} the balance",
                        if t.in_balance { "back in" } else { "taken out of" }
                    );
                }
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    });
}

/// Brings `tracked` in line with `wanted`: gone endpoints leave the balance, new ones are
/// tracked (out of the balance until they answer a probe).
async fn follow(client: &Client, wanted: &[String], tracked: &mut Vec<Tracked>) {
    if wanted.is_empty() {
        return;
    }
    for t in tracked
        .iter()
        .filter(|t| !wanted.contains(&t.url) && t.in_balance)
    {
        let _ = client.remove_endpoint(&t.url).await;
    }
    tracked.retain(|t| wanted.contains(&t.url));
    for url in wanted {
        if !tracked.iter().any(|t| &t.url == url) {
            tracked.push(Tracked {
                url: url.clone(),
                in_balance: false,
                probe: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_that_stop_answering_leave_and_come_back_when_they_answer() {
        assert_eq!(
            plan(&[true, true, true], &[false, true, true]),
            [Change::Remove(0)]
        );
        assert_eq!(
            plan(&[false, true, true], &[true, true, false]),
            [Change::Add(0), Change::Remove(2)]
        );
        assert_eq!(plan(&[true, true], &[true, true]), []);
    }

    #[test]
    fn the_balance_is_never_left_empty() {
        // Nothing answers: everything goes (back) in.
        assert_eq!(plan(&[false, true], &[false, false]), [Change::Add(0)]);
        assert_eq!(plan(&[true, true], &[false, false]), []);
    }
}
