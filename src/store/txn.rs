//! Transactions in rift's terms: a [`Guard`] (what must hold) and an [`Op`] (what to do), the
//! only way code outside `src/store/` builds an etcd transaction ([`Store::txn`]). They wrap
//! etcd's compare and op types so that no `etcd_client` type crosses the store boundary.
//!
//! [`Store::txn`]: super::Store::txn

use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};

/// A condition a transaction's ops depend on.
#[derive(Clone, Debug)]
pub struct Guard(pub(super) Compare);

impl Guard {
    /// `key` does not exist (it was never written, or it was deleted).
    pub fn absent(key: impl Into<Vec<u8>>) -> Guard {
        Guard(Compare::version(key, CompareOp::Equal, 0))
    }

    /// `key` exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Guard {
        Guard(Compare::version(key, CompareOp::Greater, 0))
    }

    /// `key` was last written at `mod_revision` (unchanged since it was read).
    pub fn unchanged(key: impl Into<Vec<u8>>, mod_revision: i64) -> Guard {
        Guard(Compare::mod_revision(key, CompareOp::Equal, mod_revision))
    }

    /// `key` was created at `create_revision` (the same incarnation of it, however often it
    /// was rewritten since).
    pub fn created_at(key: impl Into<Vec<u8>>, create_revision: i64) -> Guard {
        Guard(Compare::create_revision(
            key,
            CompareOp::Equal,
            create_revision,
        ))
    }

    /// No key under `prefix` was written after `revision` (deletions are not seen: a key
    /// deleted since leaves no revision behind).
    pub fn prefix_unchanged_since(prefix: impl Into<Vec<u8>>, revision: i64) -> Guard {
        Guard(Compare::mod_revision(prefix, CompareOp::Less, revision + 1).with_prefix())
    }
}

/// One operation in a transaction.
#[derive(Clone, Debug)]
pub struct Op(pub(super) TxnOp);

impl Op {
    /// Puts `value` at `key`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op(TxnOp::put(key, value, None))
    }

    /// Puts `value` at `key`, attached to `lease`: the key goes when the lease does.
    pub fn put_on_lease(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op(TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        ))
    }

    /// Deletes `key` (nothing when it does not exist).
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op(TxnOp::delete(key, None))
    }

    /// Reads `key` (its value comes back in the transaction's responses).
    pub(super) fn get(key: impl Into<Vec<u8>>) -> Op {
        Op(TxnOp::get(key, None))
    }
}
