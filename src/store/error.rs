//! Errors from the store, phrased for the person who has to act on them.

/// Everything that can go wrong talking to etcd through the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach etcd (tried {endpoints}): {reason}. Is etcd running? Set --endpoints or RIFT_ENDPOINTS to where it listens.")]
    Unreachable { endpoints: String, reason: String },
    #[error("{key} changed since it was read (someone else wrote it); read it again and retry")]
    Conflict { key: String },
    #[error("{kind}/{name} already exists")]
    AlreadyExists { kind: String, name: String },
    #[error("{kind}/{name} not found")]
    NotFound { kind: String, name: String },
    #[error("the value stored at {key} is not valid: {reason}")]
    Decode { key: String, reason: String },
    #[error("{count} writes in one transaction is more than etcd allows (--max-txn-ops, 128 by default); split the input or raise the limit on every etcd member")]
    TooManyOps { count: usize },
    /// `bytes` is the request's size when known (0 when not).
    #[error("{} is more than etcd accepts in one request (--max-request-bytes, 1.5 MiB by default); nothing was written. Apply the input in smaller groups (each group is all or nothing), or raise --max-request-bytes on every etcd member", describe_size(*bytes))]
    TooLarge { bytes: usize },
    #[error("this process is no longer the leader; the write was refused by the leader fence")]
    Fenced,
    #[error("etcd did not answer within {seconds} s (tried {endpoints})")]
    Timeout { endpoints: String, seconds: u64 },
    #[error("the etcd lease {lease:x} was lost (not renewed for a whole TTL, or expired); whatever it held is gone")]
    LeaseLost { lease: i64 },
    #[error("etcd refused the request: permission denied: the identity in use ({user}) may not do this. Nodes write only under their own /rift/v1/agents/<node>/; operators use the root identity (RIFT_CONFIG, written by `rift up` as <state>/admin.conf)")]
    PermissionDenied { user: String },
    #[error("{0}")]
    Credentials(String),
    /// etcd knows no user for the certificate's common name (never admitted, or removed).
    #[error("{0}")]
    UnknownUser(String),
    /// etcd refused because what the request creates exists (an auth user or role).
    #[error("etcd refused the request: {0}")]
    EtcdAlreadyExists(String),
    /// etcd refused because what the request names does not exist (an auth user or role).
    #[error("etcd refused the request: {0}")]
    EtcdNotFound(String),
    /// etcd refused because the lease the request names is gone (expired or revoked).
    #[error("etcd refused the request: {0}")]
    LeaseNotFound(String),
    /// etcd refused to promote a learner that has not caught up with the leader's log yet.
    #[error("etcd refused the request: {0}")]
    LearnerNotCaughtUp(String),
    /// A watch stream ended without an error (etcd closed it); it is opened again.
    #[error("the {what} watch stream ended; it is opened again")]
    StreamEnded { what: &'static str },
    /// The operating system gave no random bytes (a key could not be made); nothing was
    /// written.
    #[error("the system gave no random bytes for {what}; nothing was written")]
    NoRandomness { what: &'static str },
    /// etcd refused a request that raced a change to its users or roles (another node being
    /// admitted, a role granted): it was checked against the auth state before the change and
    /// not applied, so sending it again is safe and normally succeeds at once.
    #[error("etcd refused the request because its users or roles changed meanwhile ({0}); it was not applied and is sent again")]
    AuthChanged(String),
    /// Any other refusal by etcd, with etcd's reason.
    #[error("etcd refused the request: {0}")]
    Etcd(String),
}

impl StoreError {
    /// True for conditions that pass on their own (etcd restarting, a network blip, etcd
    /// shedding load: "too many requests" while its apply lags its commits by 5,000 entries).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unreachable { .. }
            | StoreError::Timeout { .. }
            | StoreError::AuthChanged(_) => true,
            StoreError::Etcd(reason) => reason.contains("too many requests"),
            _ => false,
        }
    }

    /// Classifies an etcd client error, naming `endpoints` where that helps.
    pub fn from_etcd(err: etcd_client::Error, endpoints: &str) -> Self {
        use etcd_client::Error as E;
        match err {
            E::GRpcStatus(status) => {
                let msg = status.message();
                if msg.contains("too many operations in txn request") {
                    StoreError::TooManyOps { count: 0 }
                } else if status.code() as i32 == 7 {
                    StoreError::PermissionDenied {
                        user: "its certificate's common name".into(),
                    }
                } else if msg.contains("user name not found") {
                    StoreError::UnknownUser(format!(
                        "etcd at {endpoints} knows no user for this certificate's common name: \
                         the node was never admitted (join it with a token) or its identity was \
                         removed"
                    ))
                } else if is_certificate_problem(msg) {
                    StoreError::Credentials(certificate_message(endpoints, msg))
                } else if msg.contains("request is too large")
                    || msg.contains("received message larger than max")
                {
                    // The second is gRPC's own limit (etcd's plus 512 KiB).
                    StoreError::TooLarge { bytes: 0 }
                } else if is_connectivity_code(status.code() as i32, msg)
                    || msg.contains("raft: stopped")
                    || msg.contains("server stopped")
                {
                    // The member answering is stopping (e.g. it was just removed from the
                    // cluster): another endpoint serves the retry.
                    StoreError::Unreachable {
                        endpoints: endpoints.to_string(),
                        reason: first_line(msg),
                    }
                } else {
                    refusal(first_line(msg))
                }
            }
            E::TransportError(e) if is_certificate_problem(&format!("{e:?}")) => {
                StoreError::Credentials(certificate_message(endpoints, &format!("{e:?}")))
            }
            E::TransportError(e) => StoreError::Unreachable {
                endpoints: endpoints.to_string(),
                reason: first_line(&e.to_string()),
            },
            E::IoError(e) => StoreError::Unreachable {
                endpoints: endpoints.to_string(),
                reason: first_line(&e.to_string()),
            },
            other => StoreError::Etcd(first_line(&other.to_string())),
        }
    }
}

/// The variant for a refusal callers tell apart, classified once here by etcd's message.
fn refusal(msg: String) -> StoreError {
    if msg.contains("lease not found") {
        StoreError::LeaseNotFound(msg)
    } else if msg.contains("revision of auth store is old") {
        StoreError::AuthChanged(msg)
    } else if msg.contains("in sync with leader") {
        StoreError::LearnerNotCaughtUp(msg)
    } else if msg.contains("already exists") {
        StoreError::EtcdAlreadyExists(msg)
    } else if msg.contains("not found") {
        StoreError::EtcdNotFound(msg)
    } else {
        StoreError::Etcd(msg)
    }
}

/// gRPC status codes that mean "could not talk to etcd" (numbers from the gRPC spec, so rift
/// does not depend on tonic directly): DEADLINE_EXCEEDED (4), UNAVAILABLE (14), UNKNOWN (2)
/// when it wraps a transport failure, and INTERNAL (13) when it is an HTTP/2 protocol error (a
/// connection corrupted on the way, e.g. replies lost mid-frame): the next request on a fresh
/// connection may well succeed.
fn is_connectivity_code(code: i32, message: &str) -> bool {
    match code {
        4 | 14 => true,
        2 => message.contains("transport") || message.contains("connect"),
        13 => message.contains("h2 protocol error") || message.contains("connection"),
        _ => false,
    }
}

/// TLS failures (rustls' messages) that no retry fixes: a certificate the other side does not
/// accept, or one this side does not.
fn is_certificate_problem(message: &str) -> bool {
    [
        "certificate",
        "Certificate",
        "UnknownIssuer",
        "tls handshake",
    ]
    .iter()
    .any(|m| message.contains(m))
}

fn certificate_message(endpoints: &str, message: &str) -> String {
    let hint = if message.contains("Expired") || message.contains("expired") {
        "a certificate has expired: `rift certs check` shows which"
    } else if message.contains("UnknownIssuer") || message.contains("unknown ca") {
        "the certificates come from different CAs: this client's RIFT_CONFIG (or the node's \
         pki/ca.crt) belongs to another cluster"
    } else if message.contains("NotValidForName") {
        "the server's certificate is not for etcd.rift: it is no rift etcd member"
    } else {
        "check RIFT_CONFIG (or the node's pki/ files) with `rift certs check`"
    };
    format!(
        "TLS with etcd at {endpoints} failed: {}; {hint}",
        first_line(message)
    )
}

fn describe_size(bytes: usize) -> String {
    if bytes == 0 {
        "the request".into()
    } else {
        format!(
            "{:.1} MiB in one transaction",
            bytes as f64 / (1 << 20) as f64
        )
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_string()
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_raced_an_auth_change_is_transient() {
        // etcd's ErrAuthOldRevision, as its server returns it.
        let e = refusal("etcdserver: revision of auth store is old".into());
        assert!(matches!(e, StoreError::AuthChanged(_)));
        assert!(e.is_transient());
        assert!(!refusal("etcdserver: lease not found".into()).is_transient());
    }
}
