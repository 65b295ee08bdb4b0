//! Trust for test clusters: every cluster a test starts has its own CA (a TLS cluster with
//! client certificates and etcd authentication is the default, as in production), and a
//! registry lets the fixtures that take an endpoints string (`rift(endpoints, ..)`,
//! `TestAgent::start(name, endpoints, ..)`, `http::get(addr, ..)`) find that cluster's
//! credentials: the operator's `admin.conf`, the CA to issue node identities with.
//!
//! Entries are keyed by `host:port` (of etcd client URLs and of agents) and removed when the
//! cluster or agent is dropped. Ports are kernel-chosen and unique while in use, so two live
//! clusters never share a key.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rift::pki::credentials::Credentials;
use rift::pki::local::LocalTrust;
use rift::pki::{Identity, NodeRole};
use rift::store::{Access, Store};

/// One cluster's credentials, read from files when needed (a bootstrapping agent writes its
/// own a moment after it starts).
#[derive(Debug)]
pub struct Trust {
    /// The operator's credentials (`root`).
    pub admin_conf: PathBuf,
    /// A directory with `ca.crt` and `ca.key`.
    pub ca_dir: PathBuf,
    /// A controller agent that serves joins (`https://127.0.0.1:PORT`), once one runs.
    pub join_url: Mutex<Option<String>>,
}

impl Trust {
    pub fn new(admin_conf: &Path, ca_dir: &Path) -> Arc<Trust> {
        Arc::new(Trust {
            admin_conf: admin_conf.to_path_buf(),
            ca_dir: ca_dir.to_path_buf(),
            join_url: Mutex::new(None),
        })
    }

    /// The operator's identity, once its file exists.
    pub fn admin(&self) -> Option<Identity> {
        Credentials::load(&self.admin_conf)
            .ok()
            .map(|c| c.identity())
    }

    /// Root's access to `endpoints` (panics if the credentials are not written yet).
    pub fn access(&self, endpoints: &[String]) -> Access {
        let admin = self
            .admin()
            .unwrap_or_else(|| panic!("no credentials at {}", self.admin_conf.display()));
        Access::tls(endpoints, admin)
    }

    pub fn ca(&self) -> LocalTrust {
        LocalTrust::open(&self.ca_dir)
            .unwrap_or_else(|e| panic!("the CA in {}: {e}", self.ca_dir.display()))
    }

    /// Gives node `node` an identity under `<state_dir>/pki/` and its etcd user, as a join
    /// would (keys made here instead of on the node). Idempotent.
    pub fn admit(&self, endpoints: &str, state_dir: &Path, node: &str, role: NodeRole, ip: &str) {
        let pki = rift::pki::PkiDir::new(state_dir);
        let ours = pki
            .ca_pem()
            .ok()
            .flatten()
            .is_some_and(|pem| pem.trim() == self.ca().ca().cert_pem().trim());
        if !pki.has_identity() || !ours {
            self.ca()
                .provision_node(
                    state_dir,
                    node,
                    role,
                    &[ip.to_string()],
                    rift::pki::LEAF_VALIDITY,
                )
                .expect("provision a node identity");
        }
        let access = self.access(&split(endpoints));
        let node = node.to_string();
        block_on(async move {
            let store = Store::connect(&access).await.expect("connect as root");
            rift::store::auth::ensure_admitted(&store, &node, role)
                .await
                .expect("create the node's etcd user");
        });
    }
}

fn split(endpoints: &str) -> Vec<String> {
    endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// `host:port` of a URL or address.
fn key(url: &str) -> String {
    url.split("://")
        .last()
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string()
}

/// What the registry knows about one `host:port`.
#[derive(Clone)]
struct Entry {
    trust: Arc<Trust>,
    /// For an agent's address: its node name (the name its certificate is checked against).
    node: Option<String>,
}

static REGISTRY: Mutex<Vec<(String, Entry)>> = Mutex::new(Vec::new());

/// Registers etcd client `urls` as belonging to the cluster of `trust`.
pub fn register(urls: &[String], trust: &Arc<Trust>) {
    let mut r = REGISTRY.lock().unwrap();
    for u in urls {
        let k = key(u);
        r.retain(|(e, _)| *e != k);
        r.push((
            k,
            Entry {
                trust: trust.clone(),
                node: None,
            },
        ));
    }
}

/// Registers agent `node` listening at `addr` (`host:port`).
pub fn register_agent(addr: &str, node: &str, trust: &Arc<Trust>) {
    let mut r = REGISTRY.lock().unwrap();
    let k = key(addr);
    r.retain(|(e, _)| *e != k);
    r.push((
        k,
        Entry {
            trust: trust.clone(),
            node: Some(node.to_string()),
        },
    ));
}

/// Forgets `urls` (and agent addresses).
pub fn unregister(urls: &[String]) {
    let keys: Vec<String> = urls.iter().map(|u| key(u)).collect();
    REGISTRY.lock().unwrap().retain(|(k, _)| !keys.contains(k));
}

/// The trust of the first of `endpoints` (comma-separated URLs) that is registered.
pub fn lookup(endpoints: &str) -> Option<Arc<Trust>> {
    let r = REGISTRY.lock().unwrap();
    split(endpoints).iter().find_map(|u| {
        let k = key(u);
        r.iter()
            .find(|(e, _)| *e == k)
            .map(|(_, e)| e.trust.clone())
    })
}

/// The node name and trust of the agent at `addr`.
pub fn lookup_agent(addr: &str) -> Option<(String, Arc<Trust>)> {
    let k = key(addr);
    let r = REGISTRY.lock().unwrap();
    r.iter()
        .find(|(e, en)| *e == k && en.node.is_some())
        .map(|(_, en)| (en.node.clone().unwrap(), en.trust.clone()))
}

/// Runs `f` to completion on a runtime of its own, in a thread of its own: usable from
/// synchronous fixtures whether or not the caller runs inside a tokio runtime.
pub fn block_on<F>(f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f)
    })
    .join()
    .expect("the fixture thread did not panic")
}
