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

/// Why an event was recorded: every reason rift reports, each with its string (the event's
/// `reason`, part of its id, what a Notifier subscribes to) and its type. Emitters name a
/// variant; nothing works out a type from the string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    JobSucceeded,
    JobFailed,
    JobUnschedulable,
    JobEvicted,
    NodeNotReady,
    ObjectUndecodable,
    TrainingStarted,
    TrainingComplete,
    TrainingFailed,
    ModelPromoted,
    LeaderChanged,
    VoterLearnerAdded,
    VoterPromoted,
    VoterRemoved,
    VoterStepFailed,
    EtcdMemberTls,
    EtcdMemberDied,
    EtcdMemberRemoved,
    TunnelUp,
    TunnelDown,
    RelaySwitched,
    ArtifactDeleting,
}

impl Reason {
    /// Every reason, for lists and tests.
    pub const ALL: &'static [Reason] = &[
        Reason::JobSucceeded,
        Reason::JobFailed,
        Reason::JobUnschedulable,
        Reason::JobEvicted,
        Reason::NodeNotReady,
        Reason::ObjectUndecodable,
        Reason::TrainingStarted,
        Reason::TrainingComplete,
        Reason::TrainingFailed,
        Reason::ModelPromoted,
        Reason::LeaderChanged,
        Reason::VoterLearnerAdded,
        Reason::VoterPromoted,
        Reason::VoterRemoved,
        Reason::VoterStepFailed,
        Reason::EtcdMemberTls,
        Reason::EtcdMemberDied,
        Reason::EtcdMemberRemoved,
        Reason::TunnelUp,
        Reason::TunnelDown,
        Reason::RelaySwitched,
        Reason::ArtifactDeleting,
    ];

    /// The string stored in the event (stable: event ids and Notifier subscriptions use it).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::JobSucceeded => "job_succeeded",
            Reason::JobFailed => "job_failed",
            Reason::JobUnschedulable => "job_unschedulable",
            Reason::JobEvicted => "job_evicted",
            Reason::NodeNotReady => "node_not_ready",
            Reason::ObjectUndecodable => "object_undecodable",
            Reason::TrainingStarted => "training_started",
            Reason::TrainingComplete => "training_complete",
            Reason::TrainingFailed => "training_failed",
            Reason::ModelPromoted => "model_promoted",
            Reason::LeaderChanged => "leader_changed",
            Reason::VoterLearnerAdded => "voter_learner_added",
            Reason::VoterPromoted => "voter_promoted",
            Reason::VoterRemoved => "voter_removed",
            Reason::VoterStepFailed => "voter_step_failed",
            Reason::EtcdMemberTls => "etcd_member_tls",
            Reason::EtcdMemberDied => "etcd_member_died",
            Reason::EtcdMemberRemoved => "etcd_member_removed",
            // The tunnel supervisor's reasons predate the snake_case convention; kept as
            // stored so existing events and subscriptions still match.
            Reason::TunnelUp => "TunnelUp",
            Reason::TunnelDown => "TunnelDown",
            Reason::RelaySwitched => "RelaySwitched",
            Reason::ArtifactDeleting => "artifact_deleting",
        }
    }

    /// `Warning` for what someone may have to act on, `Normal` otherwise.
    pub fn event_type(self) -> EventType {
        match self {
            Reason::JobFailed
            | Reason::JobEvicted
            | Reason::NodeNotReady
            | Reason::ObjectUndecodable
            | Reason::TrainingFailed
            | Reason::VoterStepFailed
            | Reason::EtcdMemberDied
            | Reason::TunnelDown => EventType::Warning,
            Reason::JobSucceeded
            | Reason::JobUnschedulable
            | Reason::TrainingStarted
            | Reason::TrainingComplete
            | Reason::ModelPromoted
            | Reason::LeaderChanged
            | Reason::VoterLearnerAdded
            | Reason::VoterPromoted
            | Reason::VoterRemoved
            | Reason::EtcdMemberTls
            | Reason::EtcdMemberRemoved
            | Reason::TunnelUp
            | Reason::RelaySwitched
            | Reason::ArtifactDeleting => EventType::Normal,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_string() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.as_str()), "{r:?} repeats {}", r.as_str());
        }
    }

    #[test]
    fn a_failure_is_a_warning_and_a_success_is_not() {
        assert_eq!(Reason::JobFailed.event_type(), EventType::Warning);
        assert_eq!(Reason::TrainingFailed.event_type(), EventType::Warning);
        assert_eq!(Reason::VoterStepFailed.event_type(), EventType::Warning);
        assert_eq!(Reason::JobSucceeded.event_type(), EventType::Normal);
        assert_eq!(Reason::ModelPromoted.event_type(), EventType::Normal);
    }
}
