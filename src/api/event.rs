//! `Event`: something that happened to an object, deduplicated by object and reason and stored
//! under an etcd lease so it expires on its own.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::object::{Object, Spec};

pub type Event = Object<EventSpec>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSpec {
    pub involved_object: ObjectRef,
    /// Machine-readable, e.g. `model_promoted`, `node_not_ready`.
    pub reason: String,
    pub message: String,
    #[serde(rename = "type", default)]
    pub event_type: EventType,
    #[serde(default = "one")]
    pub count: u32,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Who recorded it: `controller/<name>` or `agent/<node>`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    /// The object's uid, when the recorder knew it: tells an event about this object from one
    /// about an earlier object of the same name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[default]
    Normal,
    Warning,
}

/// Events have no separate status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoStatus {}

impl Spec for EventSpec {
    type Status = NoStatus;
    const KIND: &'static str = "Event";
    const PLURAL: &'static str = "events";
    const SINGULAR: &'static str = "event";
    const SHORT_NAMES: &'static [&'static str] = &["ev"];
    const APPLIABLE: bool = false;
}
