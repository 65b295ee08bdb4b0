//! Small resource kinds for the runtime's own tests, so they depend on no real kind's rules.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::meta::OwnerReference;
use crate::api::{Object, Spec};

/// The kind under control in tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WidgetSpec {
    #[serde(default)]
    pub size: u32,
}

impl Spec for WidgetSpec {
    type Status = ();
    const KIND: &'static str = "Widget";
    const PLURAL: &'static str = "widgets";
    const SINGULAR: &'static str = "widget";
    const SHORT_NAMES: &'static [&'static str] = &[];
}

/// A kind owned by widgets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PartSpec {}

impl Spec for PartSpec {
    type Status = ();
    const KIND: &'static str = "Part";
    const PLURAL: &'static str = "parts";
    const SINGULAR: &'static str = "part";
    const SHORT_NAMES: &'static [&'static str] = &[];
}

pub fn widget(name: &str, size: u32) -> Object<WidgetSpec> {
    Object::new(name, WidgetSpec { size })
}

/// A part owned by the widgets named in `owners`.
pub fn part(name: &str, owners: &[&str]) -> Object<PartSpec> {
    let mut p = Object::new(name, PartSpec {});
    p.metadata.owner_references = owners
        .iter()
        .map(|o| OwnerReference {
            kind: WidgetSpec::KIND.into(),
            name: o.to_string(),
            uid: format!("uid-{o}"),
            controller: true,
        })
        .collect();
    p
}
