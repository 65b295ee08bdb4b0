//! `Notifier`: deliver selected events to a webhook (JSON, Slack or Discord), optionally signed.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::event::Reason;
use super::meta::ObjectMeta;
use super::object::{Object, Spec};
use super::validation::FieldErrors;

pub type Notifier = Object<NotifierSpec>;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifierSpec {
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// Event reasons to deliver; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(default)]
    pub format: NotifierFormat,
    /// Where the HMAC-SHA256 signing secret lives; it is never stored in etcd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretRef>,
    /// Identical notifications within this many seconds are sent once.
    #[serde(default = "default_throttle")]
    pub throttle_seconds: u64,
}

fn default_throttle() -> u64 {
    60
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifierFormat {
    #[default]
    Json,
    Slack,
    Discord,
}

/// A secret read at delivery time from the environment or a file on the leader.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Spec for NotifierSpec {
    type Status = NotifierStatus;
    const KIND: &'static str = "Notifier";
    const PLURAL: &'static str = "notifiers";
    const SINGULAR: &'static str = "notifier";
    const SHORT_NAMES: &'static [&'static str] = &[];

    fn validate(&self, _meta: &ObjectMeta, errors: &mut FieldErrors) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.contains(char::is_whitespace)
        {
            errors.push("spec.url", format!("`{}` is not an http(s) URL", self.url));
        }
        for (i, e) in self.events.iter().enumerate() {
            if !Reason::ALL.iter().any(|r| r.as_str() == e) {
                errors.push(
                    format!("spec.events[{i}]"),
                    format!(
                        "unknown event `{e}`; known: {}",
                        Reason::ALL
                            .iter()
                            .map(|r| r.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        if let Some(s) = &self.secret {
            if s.env.is_some() == s.file.is_some() {
                errors.push("spec.secret", "set exactly one of `env` or `file`");
            }
        }
        super::validation::validate_seconds("spec.throttleSeconds", self.throttle_seconds, errors);
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifierStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery: Option<DateTime<Utc>>,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub failures: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribing(events: &[&str]) -> String {
        let spec = NotifierSpec {
            url: "https://hooks.example/x".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            format: NotifierFormat::Json,
            secret: None,
            throttle_seconds: 60,
        };
        Object::new("n", spec).validate().to_string()
    }

    #[test]
    fn every_recorded_reason_can_be_subscribed_and_nothing_else() {
        let all: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(subscribing(&all), "");
        // No event is ever recorded with this reason: a subscription to it would never fire.
        let refused = subscribing(&["voter_changed"]);
        assert!(refused.contains("spec.events[0]"), "{refused}");
        assert!(
            refused.contains("voter_promoted"),
            "names what is known: {refused}"
        );
    }
}
