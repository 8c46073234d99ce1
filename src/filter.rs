//! Subscription filters (seed 003): per-field conditions on a message's `data`.
//!
//! A filter is a JSON object mapping a dotted path to a condition:
//!
//! ```json
//! {"agent_id": "agent_1", "confidence_level": {"min": 0.8}, "status": {"in": ["ok", "warn"]}}
//! ```
//!
//! * a scalar (string, number, boolean, null), `{"eq": value}` or (the ESCAI
//!   seed's spelling) `{"equals": value}`: equality;
//! * `{"min": x, "max": y}` (either may be left out): an inclusive numeric range;
//! * `{"in": [v, …]}`: membership;
//! * `{"contains": "text"}`: the field, a string (or a number or boolean, by its
//!   JSON text), contains `text`.
//!
//! All conditions must hold; a missing field fails its condition. A filter is
//! compiled once per subscription and identified by its canonical text, so the
//! fan-out evaluates it once per message for every subscriber that shares it.
//!
//! Dialects build richer filters from these ([`Filter::scoped`],
//! [`Filter::and_equal`], [`Filter::any_of`]): an ESCAI connection that follows
//! two event types of one agent holds one subscription whose filter is "type A
//! with A's conditions, or type B with B's". Internally a filter is therefore a
//! disjunction of clauses, each a conjunction; a client's filter is one clause.

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
    Contains(String),
}

/// Conditions that must all hold, with their canonical JSON (path → condition).
#[derive(Debug, Clone, PartialEq)]
struct Clause {
    conditions: Vec<(Vec<String>, Condition)>,
    spec: Map<String, Value>,
}

impl Clause {
    fn matches(&self, data: &Value) -> bool {
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

    fn text(&self) -> String {
        // serde_json's Map is ordered by key, so this text is canonical.
        Value::Object(self.spec.clone()).to_string()
    }
}

/// A compiled filter: any of its clauses holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    clauses: Vec<Clause>,
    key: Arc<str>,
}

impl Filter {
    /// Compiles a client's filter object.
    pub fn compile(spec: &Map<String, Value>, limits: &FilterLimits) -> Result<Self, FilterError> {
        let clause = compile_clause(spec, &[], limits)?;
        let key = clause.text();
        if key.len() > limits.max_bytes {
            return Err(FilterError::TooLarge(limits.max_bytes));
        }
        Ok(Self {
            clauses: vec![clause],
            key: Arc::from(key),
        })
    }

    /// Compiles a client's filter whose paths are relative to `scope` (e.g.
    /// `["data"]`: the seed's conditions apply to an event's `data`). The
    /// limits apply to what the client wrote.
    pub fn scoped(
        spec: &Map<String, Value>,
        scope: &[&str],
        limits: &FilterLimits,
    ) -> Result<Self, FilterError> {
        let text = Value::Object(spec.clone()).to_string();
        if text.len() > limits.max_bytes {
            return Err(FilterError::TooLarge(limits.max_bytes));
        }
        let clause = compile_clause(spec, scope, limits)?;
        Ok(Self::from_clauses(vec![clause]))
    }

    /// A filter of one equality: `path` (dotted) equals `value`.
    pub fn equal(path: &str, value: Value) -> Self {
        let mut spec = Map::new();
        spec.insert(path.to_owned(), Value::Object(eq_spec(&value)));
        let clause = Clause {
            conditions: vec![(split(path), Condition::Eq(value))],
            spec,
        };
        Self::from_clauses(vec![clause])
    }

    /// This filter with one more equality in every clause.
    pub fn and_equal(self, path: &str, value: Value) -> Self {
        let clauses = self
            .clauses
            .into_iter()
            .map(|mut c| {
                c.spec
                    .insert(path.to_owned(), Value::Object(eq_spec(&value)));
                c.conditions
                    .push((split(path), Condition::Eq(value.clone())));
                c
            })
            .collect();
        Self::from_clauses(clauses)
    }

    /// A filter that passes what any of `filters` passes; `None` for none.
    pub fn any_of(filters: impl IntoIterator<Item = Filter>) -> Option<Self> {
        let clauses: Vec<Clause> = filters.into_iter().flat_map(|f| f.clauses).collect();
        (!clauses.is_empty()).then(|| Self::from_clauses(clauses))
    }

    fn from_clauses(mut clauses: Vec<Clause>) -> Self {
        clauses.sort_by_cached_key(Clause::text);
        clauses.dedup_by(|a, b| a.spec == b.spec);
        let key = match clauses.as_slice() {
            [one] => one.text(),
            many => format!(
                "[{}]",
                many.iter().map(Clause::text).collect::<Vec<_>>().join(",")
            ),
        };
        Self {
            clauses,
            key: Arc::from(key),
        }
    }

    /// Canonical text: equal filters have equal keys.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The canonical text, shareable.
    pub fn shared_key(&self) -> Arc<str> {
        self.key.clone()
    }

    /// Whether `data` satisfies every condition of some clause.
    pub fn matches(&self, data: &Value) -> bool {
        self.clauses.iter().any(|c| c.matches(data))
    }
}

fn split(path: &str) -> Vec<String> {
    path.split('.').map(str::to_owned).collect()
}

fn eq_spec(value: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("eq".into(), value.clone());
    m
}

fn compile_clause(
    spec: &Map<String, Value>,
    scope: &[&str],
    limits: &FilterLimits,
) -> Result<Clause, FilterError> {
    if spec.is_empty() {
        return Err(FilterError::Empty);
    }
    if spec.len() > limits.max_conditions {
        return Err(FilterError::TooManyConditions(limits.max_conditions));
    }
    let mut conditions = Vec::with_capacity(spec.len());
    let mut canonical = Map::new();
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
        let condition = compile_condition(path, cond, limits)?;
        let full: Vec<String> = scope
            .iter()
            .map(|s| (*s).to_owned())
            .chain(segments)
            .collect();
        let key = full.join(".");
        // Scoped clauses are keyed by their full path, so `{"a": 1}` under
        // `data` never shares a verdict with a client's own `{"data.a": 1}`
        // unless they mean the same.
        canonical.insert(
            key,
            if scope.is_empty() {
                cond.clone()
            } else {
                condition.canonical()
            },
        );
        conditions.push((full, condition));
    }
    Ok(Clause {
        conditions,
        spec: canonical,
    })
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
            for eq in ["eq", "equals"] {
                if let Some(v) = ops.get(eq) {
                    if ops.len() != 1 {
                        return Err(bad("\"eq\" cannot be combined with other operators"));
                    }
                    return Ok(Condition::Eq(v.clone()));
                }
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
            if let Some(v) = ops.get("contains") {
                if ops.len() != 1 {
                    return Err(bad("\"contains\" cannot be combined with other operators"));
                }
                let Value::String(text) = v else {
                    return Err(bad("\"contains\" takes a string"));
                };
                return Ok(Condition::Contains(text.clone()));
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
                return Err(bad("operators are eq, in, min, max and contains"));
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
            Self::Contains(text) => match v {
                Value::String(s) => s.contains(text.as_str()),
                Value::Number(_) | Value::Bool(_) => v.to_string().contains(text.as_str()),
                _ => false,
            },
        }
    }

    /// The condition as JSON, in one spelling per meaning.
    fn canonical(&self) -> Value {
        let mut m = Map::new();
        match self {
            Self::Eq(v) => {
                m.insert("eq".into(), v.clone());
            }
            Self::In(values) => {
                m.insert("in".into(), Value::Array(values.clone()));
            }
            Self::Contains(text) => {
                m.insert("contains".into(), Value::String(text.clone()));
            }
            Self::Range { min, max } => {
                for (k, v) in [("min", min), ("max", max)] {
                    if let Some(x) = v.and_then(serde_json::Number::from_f64) {
                        m.insert(k.into(), Value::Number(x));
                    }
                }
            }
        }
        Value::Object(m)
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

    #[test]
    fn seed_spellings_equals_and_contains() {
        let f = compile(json!({"status": {"equals": "ok"}, "note": {"contains": "disk"}})).unwrap();
        assert!(f.matches(&json!({"status": "ok", "note": "disk 91%"})));
        assert!(!f.matches(&json!({"status": "ok", "note": "cpu"})));
        let n = compile(json!({"code": {"contains": "40"}})).unwrap();
        assert!(n.matches(&json!({"code": 404})));
        assert!(!n.matches(&json!({"code": [40]})));
        assert!(matches!(
            compile(json!({"a": {"contains": 1}})),
            Err(FilterError::BadCondition(..))
        ));
    }

    #[test]
    fn scoped_clauses_combine_as_any_of() {
        let limits = FilterLimits::default();
        let spec = |v: Value| v.as_object().unwrap().clone();
        let epistemic = Filter::scoped(
            &spec(json!({"confidence_level": {"min": 0.8}})),
            &["data"],
            &limits,
        )
        .unwrap()
        .and_equal("type", json!("epistemic_update"));
        let alerts = Filter::equal("type", json!("pattern_alert"));
        let both = Filter::any_of([epistemic.clone(), alerts.clone()]).unwrap();
        let e = |c: f64| json!({"type": "epistemic_update", "data": {"confidence_level": c}});
        assert!(both.matches(&e(0.9)));
        assert!(!both.matches(&e(0.5)));
        assert!(both.matches(&json!({"type": "pattern_alert", "data": {}})));
        assert!(!both.matches(&json!({"type": "prediction_update", "data": {}})));
        let again = Filter::any_of([alerts, epistemic]).unwrap();
        assert_eq!(both.key(), again.key(), "order does not change the key");
        assert!(Filter::any_of(Vec::new()).is_none());
        let many: Map<String, Value> = (0..16).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(
            Filter::scoped(&many, &["data"], &limits).is_ok(),
            "the scope does not count against the client's limits"
        );
    }
}
