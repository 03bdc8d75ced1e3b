//! Placement constraint expressions (`node.labels.zone==east`) and spread
//! preference descriptors (`node.labels.zone`): parsing, validation and
//! matching against a [`NodeInfo`].
//!
//! The rules are Docker's: `KEY==VALUE` or `KEY!=VALUE`, spaces around the
//! key and value trimmed; keys are case-insensitive (`Node.Role`), label
//! names after the prefix are case-sensitive; values are compared
//! case-insensitively. A label the node does not have compares as the empty
//! string, so `node.labels.zone!=east` holds on a node without the label and
//! `node.labels.zone==east` does not. Architectures compare with their
//! aliases (`x86_64` = `amd64`, `aarch64` = `arm64`).
//!
//! Parsing is the API edge's job ([`parse_constraints`]): a spec with an
//! invalid expression is refused before it is stored, with an error that
//! names the expression and what is allowed.

use std::fmt;

use agent_common::objects::NodeRole;

use super::NodeInfo;

/// What a constraint may test, for error messages.
pub const ALLOWED_KEYS: &str = "node.id, node.hostname, node.role, node.platform.os, \
     node.platform.arch, node.labels.<name>, engine.labels.<name>";

const NODE_LABEL_PREFIX: &str = "node.labels.";
const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// A refused constraint expression or spread descriptor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// Neither `==` nor `!=` in the expression.
    #[error(
        "invalid constraint {expr:?}: expected KEY==VALUE or KEY!=VALUE, \
         where KEY is one of {ALLOWED_KEYS}"
    )]
    MissingOperator {
        /// The expression as given.
        expr: String,
    },
    /// The key is not one the scheduler knows.
    #[error("invalid constraint {expr:?}: unknown key {key:?}; KEY must be one of {ALLOWED_KEYS}")]
    UnknownKey {
        /// The expression as given.
        expr: String,
        /// The key found in it.
        key: String,
    },
    /// The value is empty or contains operator characters.
    #[error(
        "invalid constraint {expr:?}: the value {value:?} must be non-empty and contain \
         no '=', '!', '<', '>' or '~'"
    )]
    InvalidValue {
        /// The expression as given.
        expr: String,
        /// The value found in it.
        value: String,
    },
    /// `node.role` compared with something other than `manager` or `worker`.
    #[error("invalid constraint {expr:?}: node.role is \"manager\" or \"worker\", not {value:?}")]
    InvalidRole {
        /// The expression as given.
        expr: String,
        /// The value found in it.
        value: String,
    },
    /// A spread preference over something other than a label.
    #[error(
        "invalid placement preference spread={descriptor:?}: expected node.labels.<name> \
         or engine.labels.<name>"
    )]
    InvalidSpread {
        /// The descriptor as given.
        descriptor: String,
    },
}

/// What a constraint compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintKey {
    /// `node.id`
    NodeId,
    /// `node.hostname`
    NodeHostname,
    /// `node.role`
    NodeRole,
    /// `node.platform.os`
    PlatformOs,
    /// `node.platform.arch`
    PlatformArch,
    /// `node.labels.<name>`: an operator label on the node.
    NodeLabel(String),
    /// `engine.labels.<name>`: a label the node's daemon reports.
    EngineLabel(String),
}

/// `==` or `!=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// The node's value equals the expression's.
    Eq,
    /// The node's value differs from the expression's.
    NotEq,
}

/// A parsed constraint expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    /// What is compared.
    pub key: ConstraintKey,
    /// How.
    pub op: Operator,
    /// With what (trimmed; compared case-insensitively).
    pub value: String,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            ConstraintKey::NodeId => "node.id".to_string(),
            ConstraintKey::NodeHostname => "node.hostname".to_string(),
            ConstraintKey::NodeRole => "node.role".to_string(),
            ConstraintKey::PlatformOs => "node.platform.os".to_string(),
            ConstraintKey::PlatformArch => "node.platform.arch".to_string(),
            ConstraintKey::NodeLabel(l) => format!("{NODE_LABEL_PREFIX}{l}"),
            ConstraintKey::EngineLabel(l) => format!("{ENGINE_LABEL_PREFIX}{l}"),
        };
        let op = match self.op {
            Operator::Eq => "==",
            Operator::NotEq => "!=",
        };
        write!(f, "{key}{op}{}", self.value)
    }
}

/// Parses every expression, stopping at the first invalid one.
pub fn parse_constraints(exprs: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    exprs.iter().map(|e| Constraint::parse(e)).collect()
}

/// The label name after `prefix`, if `s` starts with it (case-insensitively)
/// and names a label.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() > prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Constraint {
    /// Parses one expression, `KEY==VALUE` or `KEY!=VALUE`.
    pub fn parse(expr: &str) -> Result<Constraint, ConstraintError> {
        let err_expr = || expr.to_string();
        // `!=` first: "a!=b" also contains no "==", but "a==b" contains no "!=".
        let (key, op, value) = if let Some((k, v)) = expr.split_once("!=") {
            (k, Operator::NotEq, v)
        } else if let Some((k, v)) = expr.split_once("==") {
            (k, Operator::Eq, v)
        } else {
            return Err(ConstraintError::MissingOperator { expr: err_expr() });
        };
        let key_str = key.trim();
        let value = value.trim();
        if value.is_empty() || value.contains(['=', '!', '<', '>', '~']) {
            return Err(ConstraintError::InvalidValue {
                expr: err_expr(),
                value: value.to_string(),
            });
        }
        let unknown = || ConstraintError::UnknownKey {
            expr: err_expr(),
            key: key_str.to_string(),
        };
        let key = match key_str.to_ascii_lowercase().as_str() {
            "node.id" => ConstraintKey::NodeId,
            "node.hostname" => ConstraintKey::NodeHostname,
            "node.role" => ConstraintKey::NodeRole,
            "node.platform.os" => ConstraintKey::PlatformOs,
            "node.platform.arch" => ConstraintKey::PlatformArch,
            _ => {
                if let Some(name) = strip_prefix_ci(key_str, NODE_LABEL_PREFIX) {
                    if !valid_label_name(name) {
                        return Err(unknown());
                    }
                    ConstraintKey::NodeLabel(name.to_string())
                } else if let Some(name) = strip_prefix_ci(key_str, ENGINE_LABEL_PREFIX) {
                    if !valid_label_name(name) {
                        return Err(unknown());
                    }
                    ConstraintKey::EngineLabel(name.to_string())
                } else {
                    return Err(unknown());
                }
            }
        };
        if key == ConstraintKey::NodeRole
            && !value.eq_ignore_ascii_case("manager")
            && !value.eq_ignore_ascii_case("worker")
        {
            return Err(ConstraintError::InvalidRole {
                expr: err_expr(),
                value: value.to_string(),
            });
        }
        Ok(Constraint {
            key,
            op,
            value: value.to_string(),
        })
    }

    /// Whether `node` satisfies this constraint.
    pub fn matches(&self, node: &NodeInfo) -> bool {
        let equal = match &self.key {
            ConstraintKey::NodeId => self.value.eq_ignore_ascii_case(&node.id),
            ConstraintKey::NodeHostname => self.value.eq_ignore_ascii_case(&node.hostname),
            ConstraintKey::NodeRole => {
                let role = match node.role {
                    NodeRole::Manager => "manager",
                    NodeRole::Worker => "worker",
                };
                self.value.eq_ignore_ascii_case(role)
            }
            ConstraintKey::PlatformOs => self.value.eq_ignore_ascii_case(&node.platform.os),
            ConstraintKey::PlatformArch => arch_eq(&self.value, &node.platform.architecture),
            ConstraintKey::NodeLabel(l) => self
                .value
                .eq_ignore_ascii_case(node.labels.get(l).map_or("", String::as_str)),
            ConstraintKey::EngineLabel(l) => self
                .value
                .eq_ignore_ascii_case(node.engine_labels.get(l).map_or("", String::as_str)),
        };
        match self.op {
            Operator::Eq => equal,
            Operator::NotEq => !equal,
        }
    }
}

/// The canonical (Go) name of an architecture, so `x86_64` matches `amd64`.
fn canonical_arch(arch: &str) -> String {
    let lower = arch.to_ascii_lowercase();
    match lower.as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" | "arm64v8" => "arm64".to_string(),
        "i386" | "i686" => "386".to_string(),
        "armhf" | "armv7l" => "arm".to_string(),
        _ => lower,
    }
}

/// Architectures equal up to case and aliases.
pub(crate) fn arch_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b) || canonical_arch(a) == canonical_arch(b)
}

/// Which label a spread preference spreads over.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SpreadKey {
    /// `node.labels.<name>`
    NodeLabel(String),
    /// `engine.labels.<name>`
    EngineLabel(String),
}

impl SpreadKey {
    /// Parses `node.labels.<name>` or `engine.labels.<name>` (prefix case-insensitive).
    pub fn parse(descriptor: &str) -> Result<SpreadKey, ConstraintError> {
        let d = descriptor.trim();
        let invalid = || ConstraintError::InvalidSpread {
            descriptor: descriptor.to_string(),
        };
        if let Some(name) = strip_prefix_ci(d, NODE_LABEL_PREFIX) {
            valid_label_name(name)
                .then(|| SpreadKey::NodeLabel(name.to_string()))
                .ok_or_else(invalid)
        } else if let Some(name) = strip_prefix_ci(d, ENGINE_LABEL_PREFIX) {
            valid_label_name(name)
                .then(|| SpreadKey::EngineLabel(name.to_string()))
                .ok_or_else(invalid)
        } else {
            Err(invalid())
        }
    }

    /// The node's value for this key; a node without the label has `""`,
    /// so all such nodes form one group of their own.
    pub fn value<'a>(&self, node: &'a NodeInfo) -> &'a str {
        let labels = match self {
            SpreadKey::NodeLabel(_) => &node.labels,
            SpreadKey::EngineLabel(_) => &node.engine_labels,
        };
        let (SpreadKey::NodeLabel(name) | SpreadKey::EngineLabel(name)) = self;
        labels.get(name).map_or("", String::as_str)
    }
}

/// Parses every spread preference, stopping at the first invalid one.
pub fn parse_preferences(
    prefs: &[agent_common::spec::PlacementPreference],
) -> Result<Vec<SpreadKey>, ConstraintError> {
    prefs.iter().map(|p| SpreadKey::parse(&p.spread)).collect()
}
