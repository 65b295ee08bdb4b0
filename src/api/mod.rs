//! Resource types (one file per kind), their metadata, validation, and manifest decoding.
//!
//! Every kind is `Object<Spec>`: `apiVersion: rift/v1`, `kind`, `metadata`, `spec`, `status`,
//! camelCase in YAML, unknown fields rejected.

pub mod artifact;
pub mod artifact_store;
pub mod duration;
pub mod event;
pub mod input;
pub mod job;
pub mod job_io;
pub mod kinds;
pub mod labels;
pub mod manifest;
pub mod meta;
pub mod node;
pub mod notifier;
pub mod object;
pub mod placement;
pub mod pool;
pub mod secret_env;
pub mod selector;
pub mod training_target;
pub mod tunnel;
pub mod validation;
pub mod voter_set;

/// The one API version this build speaks.
pub const API_VERSION: &str = "rift/v1";

pub use artifact::{Artifact, ArtifactSpec, Digest};
pub use artifact_store::{ArtifactStore, ArtifactStoreSpec};
pub use event::{Event, EventSpec};
pub use job::{Job, JobPhase, JobSpec, JobStatus};
pub use job_io::{JobInput, JobOutput};
pub use meta::ObjectMeta;
pub use node::{Node, NodeSpec, NodeStatus};
pub use notifier::{Notifier, NotifierSpec};
pub use object::{Object, Spec};
pub use pool::{Pool, PoolSpec};
pub use training_target::{TrainingTarget, TrainingTargetSpec};
pub use tunnel::{Tunnel, TunnelSpec};
pub use voter_set::{VoterSet, VoterSetSpec};
