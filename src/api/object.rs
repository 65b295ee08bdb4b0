//! The generic object envelope (`apiVersion`, `kind`, `metadata`, `spec`, `status`) and the
//! [`Spec`] trait each kind implements.

use std::fmt::Debug;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::meta::ObjectMeta;
use super::validation::FieldErrors;
use super::API_VERSION;

/// What makes a struct the `spec` of a resource kind.
///
/// The associated constants are the names people type (`rift get nodes`, `rift get no`) and the
/// path segment under which objects are stored (`/rift/v1/<PLURAL>/<name>`).
pub trait Spec:
    Serialize + DeserializeOwned + JsonSchema + Clone + Debug + PartialEq + Send + Sync + 'static
{
    /// The observed state written by whoever owns it (a controller or an agent).
    type Status: Serialize
        + DeserializeOwned
        + JsonSchema
        + Clone
        + Debug
        + PartialEq
        + Default
        + Send
        + Sync
        + 'static;

    const KIND: &'static str;
    const PLURAL: &'static str;
    const SINGULAR: &'static str;
    const SHORT_NAMES: &'static [&'static str];
    /// Whether operators may create this kind with `rift apply`.
    const APPLIABLE: bool = true;

    /// Why `name` cannot name an object of this kind (`None`: it can). Most kinds take a
    /// DNS-1123 label; a kind named by its content overrides this.
    fn name_problem(name: &str) -> Option<String> {
        super::validation::dns1123_problem(name)
    }

    /// Semantic checks serde cannot express (ranges, cross-field rules). Paths are relative to
    /// the object (`spec.replicas`).
    fn validate(&self, _meta: &ObjectMeta, _errors: &mut FieldErrors) {}
}

/// One resource: the envelope shared by every kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(
    serialize = "S: Serialize, S::Status: Serialize",
    deserialize = "S: DeserializeOwned, S::Status: DeserializeOwned"
))]
#[schemars(bound = "S: JsonSchema, S::Status: JsonSchema")]
pub struct Object<S: Spec> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Observed state. Ignored by `rift apply`; stored under `/rift/v1/status/...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<S::Status>,
}

impl<S: Spec> Object<S> {
    /// A new object with the given name and spec, as an operator or controller would create it.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: S::KIND.to_string(),
            metadata: ObjectMeta::named(name),
            spec,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// All checks an object must pass before it is stored: envelope, name, labels and the kind's
    /// own rules. Returns every problem found, not just the first.
    pub fn validate(&self) -> FieldErrors {
        let mut errors = FieldErrors::default();
        if self.api_version != API_VERSION {
            errors.push(
                "apiVersion",
                format!("must be `{API_VERSION}`, got `{}`", self.api_version),
            );
        }
        if self.kind != S::KIND {
            errors.push(
                "kind",
                format!("must be `{}`, got `{}`", S::KIND, self.kind),
            );
        }
        if let Some(problem) = S::name_problem(&self.metadata.name) {
            errors.push("metadata.name", problem);
        }
        super::validation::validate_meta_labels(&self.metadata, &mut errors);
        self.spec.validate(&self.metadata, &mut errors);
        errors
    }
}
