//! Label and field selectors as the API server parses them (`labelSelector=…`, `fieldSelector=…`),
//! evaluated against the JSON form of an object.

use serde_json::Value;

use super::validate::{is_label_key, is_label_value};

#[derive(Debug, Clone)]
enum Req {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<Req>);

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn check_key(key: &str) -> Result<String, String> {
    if is_label_key(key) {
        Ok(key.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label key \"{key}\""
        ))
    }
}

fn check_value(value: &str) -> Result<String, String> {
    if is_label_value(value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "unable to parse requirement: invalid label value: \"{value}\""
        ))
    }
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "unable to parse requirement: empty requirement in \"{s}\""
                ));
            }
            if let Some(key) = part.strip_prefix('!') {
                reqs.push(Req::NotExists(check_key(key.trim())?));
                continue;
            }
            // Set-based: `key in (a,b)` / `key notin (a,b)`.
            let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
            if words.len() == 2 {
                let rest = words[1].trim_start();
                let (op, tail) = if let Some(t) = rest.strip_prefix("notin") {
                    ("notin", t)
                } else if let Some(t) = rest.strip_prefix("in") {
                    ("in", t)
                } else {
                    ("", rest)
                };
                let tail = tail.trim();
                if !op.is_empty() && tail.starts_with('(') {
                    let Some(inner) = tail.strip_prefix('(').and_then(|t| t.strip_suffix(')'))
                    else {
                        return Err(format!(
                            "unable to parse requirement: unbalanced parentheses in \"{part}\""
                        ));
                    };
                    let key = check_key(words[0])?;
                    let mut values = Vec::new();
                    for v in inner.split(',') {
                        values.push(check_value(v.trim())?);
                    }
                    reqs.push(if op == "in" {
                        Req::In(key, values)
                    } else {
                        Req::NotIn(key, values)
                    });
                    continue;
                }
            }
            if let Some((k, v)) = part.split_once("!=") {
                reqs.push(Req::NotEquals(check_key(k.trim())?, check_value(v.trim())?));
            } else if let Some((k, v)) = part.split_once("==") {
                reqs.push(Req::Equals(check_key(k.trim())?, check_value(v.trim())?));
            } else if let Some((k, v)) = part.split_once('=') {
                reqs.push(Req::Equals(check_key(k.trim())?, check_value(v.trim())?));
            } else if part.contains(['<', '>', '(', ')', ' ']) {
                return Err(format!(
                    "unable to parse requirement: unsupported or malformed requirement \"{part}\""
                ));
            } else {
                reqs.push(Req::Exists(check_key(part)?));
            }
        }
        Ok(Self(reqs))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
            Req::Equals(k, v) => get(k) == Some(v.as_str()),
            Req::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        })
    }
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// `fields` lists the selectable fields of the resource, beside `metadata.name` and
    /// `metadata.namespace`, which every resource supports.
    pub(crate) fn parse(s: &str, fields: &[&str]) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self::default());
        }
        let mut out = Vec::new();
        for part in s.split(',') {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                ));
            };
            let field = field.trim();
            if !(field == "metadata.name"
                || field == "metadata.namespace"
                || fields.contains(&field))
            {
                return Err(format!("field label not supported: {field}"));
            }
            out.push((field.to_string(), eq, value.trim().to_string()));
        }
        Ok(Self(out))
    }

    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, eq, value)| {
            let actual = field_value(object, field);
            (actual == *value) == *eq
        })
    }
}

fn field_value(object: &Value, field: &str) -> String {
    if field == "status.successful" {
        // Jobs: the number of succeeded pods, as a string.
        return object
            .pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string();
    }
    let pointer = format!("/{}", field.replace('.', "/"));
    object
        .pointer(&pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_parse_and_match_like_the_api_server() {
        let obj = json!({"metadata": {"labels": {"app": "coderun", "run": "r1", "tier": "x"}}});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(&obj);
        assert!(m(""));
        assert!(m("app=coderun"));
        assert!(m("app==coderun,run"));
        assert!(m("app=coderun,run!=r2"));
        assert!(!m("app!=coderun"));
        assert!(m("missing!=x"));
        assert!(m("!missing"));
        assert!(!m("!app"));
        assert!(m("tier in (x,y),run notin (r2)"));
        assert!(!m("tier notin (x)"));
        assert!(!m("app=coderun,run=r2"));
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_selectors_know_their_fields() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}});
        let f = FieldSelector::parse("metadata.name=p,status.phase!=Pending", &["status.phase"])
            .unwrap();
        assert!(f.matches(&pod));
        assert!(FieldSelector::parse("spec.nope=x", &["status.phase"]).is_err());
        let job = json!({"metadata": {"name": "j"}, "status": {"succeeded": 1}});
        assert!(
            FieldSelector::parse("status.successful=1", &["status.successful"])
                .unwrap()
                .matches(&job)
        );
    }
}
