//! Join tokens in etcd: one record per token under `/rift/tokens/<id>` (outside `/rift/v1/`,
//! so only `root` reads them), holding the token's role, expiry and an HMAC of its secret.
//! Revoking deletes the record, so a revoked token is refused like one that never existed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::token::{self, Token};
use super::JoinError;
use crate::pki::NodeRole;
use crate::store::auth::TrustRecord;
use crate::store::{keys, Store, StoreError};
use crate::store::{Guard, Op};

/// What etcd keeps about a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: NodeRole,
    /// HMAC-SHA256 of the secret under the cluster's token key, hex.
    pub digest: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Why a presented token is refused. The messages are for the joining node's operator; an
/// unknown id, a revoked token and a wrong secret read alike.
pub fn check(
    record: Option<&TokenRecord>,
    trust: &TrustRecord,
    id: &str,
    secret: &str,
    now: DateTime<Utc>,
) -> Result<NodeRole, JoinError> {
    let unknown = || JoinError::TokenRefused("unknown, revoked, or its secret is wrong".into());
    let record = record.ok_or_else(unknown)?;
    if !token::verify(&trust.token_key(), id, secret, &record.digest) {
        return Err(unknown());
    }
    if now >= record.expires {
        return Err(JoinError::TokenRefused(format!(
            "it expired at {}; make a new one with `rift token create`",
            record.expires.to_rfc3339()
        )));
    }
    Ok(record.role)
}

/// Creates a token for `role` valid for `ttl`; returns it (the only time its secret is seen).
pub async fn create(
    store: &Store,
    trust: &TrustRecord,
    role: NodeRole,
    ttl: std::time::Duration,
    description: &str,
) -> Result<Token, JoinError> {
    let ca_hash = crate::pki::ca::fingerprint(&trust.ca_cert)?;
    let ttl = chrono::Duration::from_std(ttl)
        .ok()
        .filter(|d| *d > chrono::Duration::zero() && *d <= chrono::Duration::days(3650))
        .ok_or_else(|| JoinError::Usage("--ttl must be between 1s and 10 years".into()))?;
    for _ in 0..8 {
        let t = Token::generate(&ca_hash);
        let now = Utc::now();
        let record = TokenRecord {
            id: t.id.clone(),
            role,
            digest: token::digest(&trust.token_key(), &t.id, &t.secret),
            created: now,
            expires: now + ttl,
            description: description.into(),
        };
        let key = keys::token(&t.id);
        let body = serde_json::to_vec(&record).expect("a token record serializes");
        let outcome = store
            .txn(
                vec![Guard::created_at(key.as_str(), 0)],
                vec![Op::put(key.as_str(), body)],
                vec![],
            )
            .await?;
        if outcome.succeeded {
            return Ok(t);
        }
    }
    Err(JoinError::Store(StoreError::Conflict {
        key: keys::TOKENS_PREFIX.into(),
    }))
}

/// Every token record, by id.
pub async fn list(store: &Store) -> Result<Vec<TokenRecord>, JoinError> {
    let (kvs, _) = store.list_raw(keys::TOKENS_PREFIX, None).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// One token's record.
pub async fn get(store: &Store, id: &str) -> Result<Option<TokenRecord>, JoinError> {
    let Some(kv) = store.get_raw(&keys::token(id)).await? else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&kv.value).ok())
}

/// Deletes a token's record; false when there was none.
pub async fn revoke(store: &Store, id: &str) -> Result<bool, JoinError> {
    Ok(store.delete_key(&keys::token(id)).await?)
}

/// Deletes records that expired more than a day ago (kept a day so `rift token list` shows
/// why a join was refused).
pub async fn prune(store: &Store, now: DateTime<Utc>) -> Result<usize, JoinError> {
    let mut n = 0;
    for r in list(store).await? {
        if r.expires + chrono::Duration::days(1) < now && revoke(store, &r.id).await? {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> TrustRecord {
        TrustRecord {
            ca_cert: String::new(),
            ca_key: String::new(),
            token_key: hex::encode([7u8; 32]),
        }
    }

    fn record(t: &Token, expires: DateTime<Utc>) -> TokenRecord {
        TokenRecord {
            id: t.id.clone(),
            role: NodeRole::Worker,
            digest: token::digest(&trust().token_key(), &t.id, &t.secret),
            created: expires - chrono::Duration::hours(24),
            expires,
            description: String::new(),
        }
    }

    #[test]
    fn a_token_is_accepted_only_with_its_secret_before_it_expires() {
        let t = Token::generate(&"00".repeat(32));
        let now = Utc::now();
        let r = record(&t, now + chrono::Duration::hours(1));
        assert_eq!(
            check(Some(&r), &trust(), &t.id, &t.secret, now).unwrap(),
            NodeRole::Worker
        );
        let wrong = check(Some(&r), &trust(), &t.id, &"0".repeat(32), now).unwrap_err();
        let revoked = check(None, &trust(), &t.id, &t.secret, now).unwrap_err();
        assert_eq!(wrong.to_string(), revoked.to_string());
        let expired = check(
            Some(&r),
            &trust(),
            &t.id,
            &t.secret,
            now + chrono::Duration::hours(2),
        )
        .unwrap_err();
        assert!(expired.to_string().contains("expired"), "{expired}");
    }
}
