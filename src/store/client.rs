//! The connection to etcd: endpoints, timeouts, raw reads, and transactions that carry the
//! leader fence when one is set.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse,
};

use super::access::Access;
use super::error::{Result, StoreError};
use super::keys;
use super::txn::{Guard, Op};
use crate::tasks::CancellationToken;

/// Default etcd client endpoint (`https://` for a TLS cluster, `http://` with `--insecure`).
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:2379";

/// How long one request may take before it counts as unanswered.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest response rift reads (lists and watch batches); gRPC's default is 4 MiB, which
/// a few thousand objects exceed.
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How long `connect` waits for etcd to answer a first request.
pub const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_secs(4);

/// One key as read from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl KeyValue {
    /// A key holding `value` as JSON, created and last written at `revision`, without a lease
    /// (the one helper unit tests build keys with).
    #[cfg(test)]
    pub(crate) fn json(key: &str, value: serde_json::Value, revision: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: serde_json::to_vec(&value).unwrap(),
            create_revision: revision,
            mod_revision: revision,
            lease: 0,
        }
    }

    pub(crate) fn from_etcd(kv: &etcd_client::KeyValue) -> Self {
        Self {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        }
    }
}

/// Proof of leadership carried by every write of a leader: the create revision of the leader
/// key it created. A deposed leader's writes fail this compare and are refused.
///
/// The one place a refused fence is noticed: the first refused write of any clone fires
/// [`Fence::refused`], which ends the leadership ([`super::leader::Leadership::lost`]) — every
/// controller, heartbeat and event writer steps down the same way.
#[derive(Clone, Debug)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
    refused: CancellationToken,
}

impl Fence {
    pub fn new(key: impl Into<String>, create_revision: i64) -> Self {
        Self {
            key: key.into(),
            create_revision,
            refused: CancellationToken::new(),
        }
    }

    /// Fires once a write carrying this fence was refused: this process no longer leads.
    pub fn refused(&self) -> &CancellationToken {
        &self.refused
    }
}

impl PartialEq for Fence {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key && self.create_revision == other.create_revision
    }
}

impl Eq for Fence {}

/// What a transaction did.
#[derive(Debug)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    /// Responses of the branch that ran (without the fence's own read).
    pub(super) responses: Vec<TxnOpResponse>,
}

/// A handle on etcd. Cheap to clone; clones share the connection.
///
/// A store made with [`Store::with_fence`] adds the leader fence to every transaction it runs,
/// and reports [`StoreError::Fenced`] when the fence fails.
#[derive(Clone)]
pub struct Store {
    client: Client,
    endpoints: Arc<str>,
    access: Access,
    op_timeout: Duration,
    fence: Option<Fence>,
    /// The endpoints in use, updatable ([`Store::set_endpoints`]).
    endpoint_set: super::endpoints::EndpointSet,
    /// Keeps the endpoint health task ([`super::endpoints`]) running while any clone lives.
    _health: Option<Arc<()>>,
}

impl Store {
    /// Connects and checks that etcd answers within [`CONNECT_PROBE_TIMEOUT`]; an unreachable
    /// etcd is one [`StoreError::Unreachable`] naming every endpoint tried, a refused identity
    /// one [`StoreError::Credentials`].
    ///
    /// With several endpoints, only those that answer a probe first are used (see
    /// [`super::endpoints`]), so a dead or unroutable first endpoint costs at most one probe
    /// timeout.
    pub async fn connect(access: &Access) -> Result<Store> {
        access.check()?;
        match Self::connect_checked(access).await {
            Err(StoreError::Unreachable { .. }) if access.identity_problem().is_some() => Err(
                StoreError::Credentials(access.identity_problem().unwrap_or_default()),
            ),
            other => other,
        }
    }

    async fn connect_checked(access: &Access) -> Result<Store> {
        let store = if access.endpoints().len() > 1 {
            let (probes, answered) = super::endpoints::probe_all(access).await;
            Self::connect_balanced(access, answered, probes, true).await?
        } else {
            Self::connect_balanced(access, vec![true], vec![None], false).await?
        };
        let mut client = store.client.clone();
        let probe = client.get(keys::LEADER, None);
        match tokio::time::timeout(CONNECT_PROBE_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(match StoreError::from_etcd(e, &store.endpoints) {
                StoreError::Etcd(reason) => StoreError::Unreachable {
                    endpoints: store.endpoints.to_string(),
                    reason,
                },
                StoreError::PermissionDenied { .. } => {
                    StoreError::PermissionDenied { user: store.user() }
                }
                other => other,
            }),
            Err(_) => Err(StoreError::Unreachable {
                endpoints: store.endpoints.to_string(),
                reason: format!("no answer within {} s", CONNECT_PROBE_TIMEOUT.as_secs()),
            }),
        }
    }

    /// Connects without waiting for etcd to answer: for long-running processes that must start
    /// while etcd is away and catch up when it is back.
    ///
    /// With several endpoints, a background task keeps requests off those that do not answer
    /// ([`super::endpoints`]); until its first probe (about a second) requests may still go
    /// to a dead one and fail.
    pub async fn connect_lazy(access: &Access) -> Result<Store> {
        access.check()?;
        let n = access.endpoints().len();
        Self::connect_balanced(access, vec![true; n], vec![None; n], true).await
    }

    /// A client balancing over the endpoints marked in `use_now` (all of them when none is),
    /// with a health task (when `watch`) that keeps the balance on those that answer and follows
    /// [`Store::set_endpoints`].
    async fn connect_balanced(
        access: &Access,
        use_now: Vec<bool>,
        probes: Vec<Option<Client>>,
        watch: bool,
    ) -> Result<Store> {
        let endpoints = access.endpoints().to_vec();
        let shown: Arc<str> = endpoints.join(",").into();
        let use_now = if use_now.iter().any(|u| *u) {
            use_now
        } else {
            vec![true; endpoints.len()]
        };
        let options = access.options(
            ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
                .with_keep_alive_while_idle(true)
                // A member cut off from the raft leader must fail requests and watches, not
                // serve a silent stream that never delivers.
                .with_require_leader(true),
        );
        let initial: Vec<&String> = endpoints
            .iter()
            .zip(&use_now)
            .filter_map(|(e, u)| u.then_some(e))
            .collect();
        let client = Client::connect(&initial, Some(options))
            .await
            .map_err(|e| StoreError::from_etcd(e, &shown))?;
        let endpoint_set = super::endpoints::EndpointSet::new(endpoints);
        let health = watch.then(|| {
            let guard = Arc::new(());
            super::endpoints::spawn_health(
                client.clone(),
                access.clone(),
                endpoint_set.clone(),
                use_now,
                probes,
                Arc::downgrade(&guard),
            );
            guard
        });
        Ok(Store {
            client,
            endpoints: shown,
            access: access.clone(),
            op_timeout: DEFAULT_OP_TIMEOUT,
            fence: None,
            endpoint_set,
            _health: health,
        })
    }

    /// The etcd user this store acts as (its certificate's common name), for messages.
    pub fn user(&self) -> String {
        match self.access.identity() {
            Some(id) => id.common_name().unwrap_or_else(|_| "?".into()),
            None => "none: a plaintext cluster".into(),
        }
    }

    /// How this store reaches etcd (its configured endpoints and identity).
    pub fn access(&self) -> &Access {
        &self.access
    }

    /// Replaces the endpoints this store (and every clone) uses: new ones join the balance once
    /// they answer a probe, ones left out leave it. Only stores made by [`Store::connect_lazy`]
    /// (or [`Store::connect`] with several endpoints) follow; others ignore it.
    pub fn set_endpoints(&self, urls: Vec<String>) {
        if !urls.is_empty() {
            self.endpoint_set.set(urls);
        }
    }

    /// The endpoints this store currently uses (configured and learned).
    pub fn current_endpoints(&self) -> Vec<String> {
        self.endpoint_set.get()
    }

    /// The endpoints, comma-joined, for messages.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The underlying etcd client: for `src/store/` itself, and for tests that act on etcd
    /// as another writer would. Code outside `src/store/` speaks rift's types instead (the
    /// store boundary, docs/architecture.md "Shapes").
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A KV client that takes answers up to [`MAX_RESPONSE_BYTES`] (listings, batched reads),
    /// not gRPC's default 4 MiB.
    pub(crate) fn kv_for_large_answers(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// A store whose every transaction also requires `fence` to hold.
    pub fn with_fence(&self, fence: Fence) -> Store {
        Store {
            fence: Some(fence),
            ..self.clone()
        }
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Resolves once a write carrying this store's fence was refused; never for an unfenced
    /// store.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only waits on a token.
    pub async fn deposed(&self) {
        match &self.fence {
            Some(f) => f.refused.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// Runs one request with the store's timeout, classifying errors.
    pub(super) async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map_err(|e| match StoreError::from_etcd(e, &self.endpoints) {
                StoreError::PermissionDenied { .. } => {
                    StoreError::PermissionDenied { user: self.user() }
                }
                other => other,
            }),
            Err(_) => Err(StoreError::Timeout {
                endpoints: self.endpoints.to_string(),
                seconds: self.op_timeout.as_secs(),
            }),
        }
    }

    /// Reads one key.
    pub async fn get_raw(&self, key: &str) -> Result<Option<KeyValue>> {
        let mut c = self.client.clone();
        let resp = self.call(c.get(key, None)).await?;
        Ok(resp.kvs().first().map(KeyValue::from_etcd))
    }

    /// Reads every key under `prefix` at one revision (the latest when `revision` is `None`),
    /// returning the keys and that revision.
    pub async fn list_raw(
        &self,
        prefix: &str,
        revision: Option<i64>,
    ) -> Result<(Vec<KeyValue>, i64)> {
        let mut opts = GetOptions::new().with_prefix();
        if let Some(rev) = revision {
            opts = opts.with_revision(rev);
        }
        let mut kv = self.kv_for_large_answers();
        let resp = self.call(kv.get(prefix, Some(opts))).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
        Ok((resp.kvs().iter().map(KeyValue::from_etcd).collect(), rev))
    }

    /// The names of every key under `prefix` (one keys-only read: no values).
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let mut kv = self.kv_for_large_answers();
        let resp = self.call(kv.get(prefix, Some(opts))).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    /// Deletes one key; false when there was none.
    pub async fn delete_key(&self, key: &str) -> Result<bool> {
        let mut c = self.client.clone();
        let resp = self.call(c.delete(key, None)).await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes every key under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<i64> {
        let mut c = self.client.clone();
        let opts = etcd_client::DeleteOptions::new().with_prefix();
        let resp = self.call(c.delete(prefix, Some(opts))).await?;
        Ok(resp.deleted())
    }

    /// The backend database size of the member that answers, in bytes (what etcd's quota
    /// counts).
    pub async fn db_size(&self) -> Result<i64> {
        let mut c = self.client.clone();
        Ok(self.call(c.status()).await?.db_size())
    }

    /// Takes `url` out of the endpoints requests are balanced over at once (a member that is
    /// gone); [`Self::set_endpoints`] adds endpoints back once they answer.
    pub async fn drop_endpoint(&self, url: &str) {
        let _ = self.client.remove_endpoint(url).await;
    }

    /// The etcd server's version and the cluster id, from the member that answers
    /// (`rift version`).
    pub async fn server_version(&self) -> Result<(String, u64)> {
        let mut c = self.client.clone();
        let resp = self.call(c.status()).await?;
        let cluster = resp.header().map(|h| h.cluster_id()).unwrap_or_default();
        Ok((resp.version().to_string(), cluster))
    }

    /// The current store revision.
    pub async fn revision(&self) -> Result<i64> {
        let mut c = self.client.clone();
        let resp = self
            .call(c.get(keys::LEADER, Some(GetOptions::new().with_count_only())))
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Checks that the leader fence (if any) still holds: [`StoreError::Fenced`] when this
    /// process no longer leads. For actions no transaction can guard (membership changes).
    pub async fn check_fence(&self) -> Result<()> {
        self.txn(vec![], vec![], vec![]).await.map(|_| ())
    }

    /// Runs `if compares then ops else failure_ops`, adding the fence when set.
    ///
    /// A failed fence is reported as [`StoreError::Fenced`], never as an ordinary failed
    /// compare, so callers cannot mistake losing leadership for a conflict.
    pub async fn txn(
        &self,
        guards: Vec<Guard>,
        ops: Vec<Op>,
        failure_ops: Vec<Op>,
    ) -> Result<TxnOutcome> {
        let mut compares: Vec<Compare> = guards.into_iter().map(|g| g.0).collect();
        let ops: Vec<TxnOp> = ops.into_iter().map(|o| o.0).collect();
        let mut failure_ops: Vec<TxnOp> = failure_ops.into_iter().map(|o| o.0).collect();
        let op_count = ops.len().max(compares.len());
        if let Some(f) = &self.fence {
            compares.push(Compare::create_revision(
                f.key.as_str(),
                CompareOp::Equal,
                f.create_revision,
            ));
            failure_ops.push(TxnOp::get(f.key.as_str(), None));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(failure_ops);
        let mut c = self.client.clone();
        let resp = self.call(c.txn(txn)).await.map_err(|e| match e {
            StoreError::TooManyOps { .. } => StoreError::TooManyOps { count: op_count },
            other => other,
        })?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let mut responses = resp.op_responses();
        if !resp.succeeded() {
            if let Some(f) = &self.fence {
                let fence_held = match responses.pop() {
                    Some(TxnOpResponse::Get(g)) => g
                        .kvs()
                        .first()
                        .is_some_and(|kv| kv.create_revision() == f.create_revision),
                    _ => false,
                };
                if !fence_held {
                    f.refused.cancel();
                    return Err(StoreError::Fenced);
                }
            }
        }
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision,
            responses,
        })
    }
}
