//! `VoterSet` (the singleton `default`): the node names that must be etcd voters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::{validate_name_ref, FieldErrors};

pub type VoterSet = Object<VoterSetSpec>;

/// The only name a VoterSet may have.
pub const VOTER_SET_NAME: &str = "default";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoterSetSpec {
    /// Node names; an odd count of 1, 3 or 5 is usual.
    pub voters: Vec<String>,
}

impl Spec for VoterSetSpec {
    type Status = VoterSetStatus;
    const KIND: &'static str = "VoterSet";
    const PLURAL: &'static str = "votersets";
    const SINGULAR: &'static str = "voterset";
    const SHORT_NAMES: &'static [&'static str] = &["vs"];

    fn validate(&self, meta: &ObjectMeta, errors: &mut FieldErrors) {
        if meta.name != VOTER_SET_NAME {
            errors.push(
                "metadata.name",
                format!("the VoterSet is a singleton and must be named `{VOTER_SET_NAME}`"),
            );
        }
        if self.voters.is_empty() {
            errors.push("spec.voters", "must name at least one voter node");
        }
        for (i, v) in self.voters.iter().enumerate() {
            validate_name_ref(&format!("spec.voters[{i}]"), v, errors);
            if self.voters[..i].contains(v) {
                errors.push(
                    format!("spec.voters[{i}]"),
                    format!("`{v}` is listed twice"),
                );
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum VoterSetPhase {
    #[default]
    Progressing,
    Converged,
    Blocked,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VoterSetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    #[serde(default)]
    pub quorum: bool,
    #[serde(default)]
    pub phase: VoterSetPhase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One etcd member as the voters controller sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    pub name: String,
    /// Member id in hex, as etcdctl prints it.
    pub id: String,
    #[serde(default)]
    pub learner: bool,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
}
