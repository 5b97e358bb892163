//! Building blocks of etcd transactions: ranges, puts, deletes, compares.

use super::proto::{self, compare::TargetUnion, request_op::Request as Op};

/// The end of the range holding every key that starts with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub fn get(key: &str) -> Op {
    Op::Range(proto::RangeRequest {
        key: key.into(),
        ..Default::default()
    })
}

pub fn get_prefix(prefix: &str) -> Op {
    Op::Range(proto::RangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix),
        ..Default::default()
    })
}

pub fn put(key: &str, value: Vec<u8>, lease: i64) -> Op {
    Op::Put(proto::PutRequest {
        key: key.into(),
        value,
        lease,
    })
}

pub fn delete(key: &str) -> Op {
    Op::DeleteRange(proto::DeleteRangeRequest {
        key: key.into(),
        range_end: Vec::new(),
    })
}

pub fn delete_prefix(prefix: &str) -> Op {
    Op::DeleteRange(proto::DeleteRangeRequest {
        key: prefix.into(),
        range_end: prefix_end(prefix),
    })
}

fn compare(key: &str, result: i32, target: i32, value: TargetUnion) -> proto::Compare {
    proto::Compare {
        result,
        target,
        key: key.into(),
        target_union: Some(value),
        range_end: Vec::new(),
    }
}

/// The key does not exist (it was never created, or was deleted since).
pub fn absent(key: &str) -> proto::Compare {
    compare(
        key,
        proto::EQUAL,
        proto::TARGET_CREATE,
        TargetUnion::CreateRevision(0),
    )
}

/// The key was last written at `revision` (0: it does not exist).
pub fn unchanged(key: &str, revision: i64) -> proto::Compare {
    compare(
        key,
        proto::EQUAL,
        proto::TARGET_MOD,
        TargetUnion::ModRevision(revision),
    )
}

/// No key under `prefix` was created after `revision`.
pub fn none_created_since(prefix: &str, revision: i64) -> proto::Compare {
    let mut c = compare(
        prefix,
        proto::LESS,
        proto::TARGET_CREATE,
        TargetUnion::CreateRevision(revision + 1),
    );
    c.range_end = prefix_end(prefix);
    c
}

/// Wraps ops for a transaction.
pub fn ops(ops: impl IntoIterator<Item = Op>) -> Vec<proto::RequestOp> {
    ops.into_iter()
        .map(|op| proto::RequestOp { request: Some(op) })
        .collect()
}
