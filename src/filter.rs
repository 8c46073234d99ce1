//! Subscription filters (seed 003): per-field conditions on a message's `data`.
//!
//! A filter is a JSON object mapping a dotted path to a condition:
//!
//! ```json
//! {"agent_id": "agent_1", "confidence_level": {"min": 0.8}, "status": {"in": ["ok", "warn"]}}
//! ```
//!
//! * a scalar (string, number, boolean, null) or `{"eq": value}`: equality;
//! * `{"min": x, "max": y}` (either may be left out): an inclusive numeric range;
//! * `{"in": [v, …]}`: membership.
//!
//! All conditions must hold; a missing field fails its condition. A filter is
//! compiled once per subscription and identified by its canonical text, so the
//! fan-out evaluates it once per message for every subscriber that shares it.

use std::sync::Arc;

use serde_json::{Map, Value};

/// Bounds on what a client may ask for.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    /// Conditions in one filter.
    pub max_conditions: usize,
    /// Segments in one dotted path.
    pub max_path_depth: usize,
    /// Values in one `in` list.
    pub max_in_values: usize,
    /// Bytes of the filter's canonical JSON.
    pub max_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        Self {
            max_conditions: 16,
            max_path_depth: 8,
            max_in_values: 64,
            max_bytes: 2048,
        }
    }
}

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("a filter needs at least one condition")]
    Empty,
    #[error("a filter may have at most {0} conditions")]
    TooManyConditions(usize),
    #[error("path {0:?} is empty or has an empty segment")]
    BadPath(String),
    #[error("path {path:?} is deeper than {max} segments")]
    PathTooDeep { path: String, max: usize },
    #[error("condition on {0:?}: {1}")]
    BadCondition(String, &'static str),
    #[error("an \"in\" list may hold at most {0} values")]
    TooManyValues(usize),
    #[error("the filter is larger than {0} bytes")]
    TooLarge(usize),
}

#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Eq(Value),
    Range { min: Option<f64>, max: Option<f64> },
    In(Vec<Value>),
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    conditions: Vec<(Vec<String>, Condition)>,
    key: Arc<str>,
}

impl Filter {
    /// Compiles a filter object.
    pub fn compile(spec: &Map<String, Value>, limits: &FilterLimits) -> Result<Self, FilterError> {
        if spec.is_empty() {
            return Err(FilterError::Empty);
        }
        if spec.len() > limits.max_conditions {
            return Err(FilterError::TooManyConditions(limits.max_conditions));
        }
        let mut conditions = Vec::with_capacity(spec.len());
        for (path, cond) in spec {
            let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
            if segments.iter().any(String::is_empty) {
                return Err(FilterError::BadPath(path.clone()));
            }
            if segments.len() > limits.max_path_depth {
                return Err(FilterError::PathTooDeep {
                    path: path.clone(),
                    max: limits.max_path_depth,
                });
            }
            conditions.push((segments, compile_condition(path, cond, limits)?));
        }
        // serde_json's Map is ordered by key, so this text is canonical.
        let key = Value::Object(spec.clone()).to_string();
        if key.len() > limits.max_bytes {
            return Err(FilterError::TooLarge(limits.max_bytes));
        }
        Ok(Self {
            conditions,
            key: Arc::from(key),
        })
    }

    /// Canonical text: equal filters have equal keys.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The canonical text, shareable.
    pub fn shared_key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// Whether `data` satisfies every condition.
    pub fn matches(&self, data: &Value) -> bool {
        self.conditions.iter().all(|(path, cond)| {
            let mut node = data;
            for segment in path {
                match node.get(segment) {
                    Some(next) => node = next,
                    None => return false,
                }
            }
            cond.holds(node)
        })
    }
}

fn compile_condition(
    path: &str,
    cond: &Value,
    limits: &FilterLimits,
) -> Result<Condition, FilterError> {
    let bad = |why| FilterError::BadCondition(path.to_owned(), why);
    match cond {
        Value::Array(_) => Err(bad("a list must be written {\"in\": [...]}")),
        Value::Object(ops) => {
            if let Some(v) = ops.get("eq") {
                if ops.len() != 1 {
                    return Err(bad("\"eq\" cannot be combined with other operators"));
                }
                return Ok(Condition::Eq(v.clone()));
            }
            if let Some(v) = ops.get("in") {
                if ops.len() != 1 {
                    return Err(bad("\"in\" cannot be combined with other operators"));
                }
                let Value::Array(values) = v else {
                    return Err(bad("\"in\" takes a list"));
                };
                if values.len() > limits.max_in_values {
                    return Err(FilterError::TooManyValues(limits.max_in_values));
                }
                return Ok(Condition::In(values.clone()));
            }
            let number = |key: &str| match ops.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .map(Some)
                    .ok_or(bad("\"min\" and \"max\" take numbers")),
            };
            let (min, max) = (number("min")?, number("max")?);
            if ops.keys().any(|k| k != "min" && k != "max") {
                return Err(bad("operators are eq, in, min and max"));
            }
            if min.is_none() && max.is_none() {
                return Err(bad("an empty condition object"));
            }
            Ok(Condition::Range { min, max })
        }
        scalar => Ok(Condition::Eq(scalar.clone())),
    }
}

impl Condition {
    fn holds(&self, v: &Value) -> bool {
        match self {
            Self::Eq(want) => values_equal(v, want),
            Self::In(set) => set.iter().any(|want| values_equal(v, want)),
            Self::Range { min, max } => match v.as_f64() {
                Some(x) => min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m),
                None => false,
            },
        }
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compile(v: Value) -> Result<Filter, FilterError> {
        Filter::compile(v.as_object().unwrap(), &FilterLimits::default())
    }

    #[test]
    fn equality_range_membership_and_paths() {
        let f = compile(json!({
            "agent_id": "agent_1",
            "confidence_level": {"min": 0.8},
            "meta.region": {"in": ["eu", "us"]},
            "n": 1
        }))
        .unwrap();
        let base =
            json!({"agent_id":"agent_1","confidence_level":0.9,"meta":{"region":"eu"},"n":1.0});
        assert!(f.matches(&base));
        let mut low = base.clone();
        low["confidence_level"] = json!(0.7);
        assert!(!f.matches(&low));
        let mut other = base.clone();
        other["meta"]["region"] = json!("ap");
        assert!(!f.matches(&other));
        assert!(!f.matches(&json!({"agent_id":"agent_1"})));
        assert!(!f.matches(&json!("not an object")));
    }

    #[test]
    fn key_is_canonical() {
        let a = compile(json!({"b": 1, "a": {"max": 2, "min": 1}})).unwrap();
        let b = compile(json!({"a": {"min": 1, "max": 2}, "b": 1})).unwrap();
        assert_eq!(a.key(), b.key());
    }

    #[test]
    fn refuses_malformed_and_oversized_filters() {
        assert_eq!(compile(json!({})), Err(FilterError::Empty));
        assert!(matches!(
            compile(json!({"a": [1]})),
            Err(FilterError::BadCondition(..))
        ));
        assert!(matches!(
            compile(json!({"a": {"gt": 1}})),
            Err(FilterError::BadCondition(..))
        ));
        assert!(matches!(
            compile(json!({"a": {"min": "x"}})),
            Err(FilterError::BadCondition(..))
        ));
        assert!(matches!(
            compile(json!({"a..b": 1})),
            Err(FilterError::BadPath(_))
        ));
        assert!(matches!(
            compile(json!({"a.b.c.d.e.f.g.h.i": 1})),
            Err(FilterError::PathTooDeep { .. })
        ));
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(
            Filter::compile(&many, &FilterLimits::default()),
            Err(FilterError::TooManyConditions(16))
        );
        let long = "x".repeat(3000);
        assert_eq!(
            compile(json!({"a": long})),
            Err(FilterError::TooLarge(2048))
        );
    }
}
