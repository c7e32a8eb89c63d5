//! The HTTP side: one handler that authenticates, applies injected faults and routes by path
//! (so unknown paths and methods get the API server's `Status` answers, not axum's).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State as AxState};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use serde_json::{Value, json};

use super::selector::{FieldSelector, LabelSelector};
use super::state::{FaultAction, Kind, Shared, State, is_terminal, now};
use super::validate;

// ---------------------------------------------------------------- responses

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

pub(crate) fn status_object(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        v["details"] = d;
    }
    v
}

fn json_response(code: u16, v: &Value) -> Response {
    let mut resp = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        v.to_string(),
    )
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(code: u16, reason: &str, message: impl Into<String>, details: Option<Value>) -> Response {
    let mut resp = json_response(code, &status_object(code, reason, &message.into(), details));
    if code == 429 {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn plain_error(code: u16, message: impl Into<String>) -> Response {
    error(code, reason_for(code), message, None)
}

fn details(kind: Kind, name: &str) -> Value {
    json!({"name": name, "group": kind.group(), "kind": kind.resource()})
}

fn not_found(kind: Kind, name: &str) -> Response {
    error(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.qualified()),
        Some(details(kind, name)),
    )
}

fn invalid(kind: Kind, name: &str, causes: &[validate::Cause]) -> Response {
    let lines: Vec<String> = causes.iter().map(validate::Cause::line).collect();
    let joined = if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!("[{}]", lines.join(", "))
    };
    let mut d = details(kind, name);
    d["causes"] = causes
        .iter()
        .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
        .collect();
    error(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {joined}", kind.qualified_kind()),
        Some(d),
    )
}

// ---------------------------------------------------------------- query strings

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(())
                {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1" | "True"))
}

// ---------------------------------------------------------------- the handler

pub(crate) async fn handle(AxState(shared): AxState<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let version = req.version();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let target = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let authorized = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.trim().is_empty());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = match axum::body::to_bytes(req.into_body(), 32 << 20).await {
        Ok(b) => b,
        Err(e) => return plain_error(400, format!("reading the request body: {e}")),
    };
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let is_job_create = method == Method::POST
        && matches!(
            segs.as_slice(),
            ["apis", "batch", "v1", "namespaces", _, "jobs"]
        );

    let fault = shared.write(|st| {
        st.requests.push(format!("{method} {target}"));
        if path.ends_with("/log") && query.split('&').any(|kv| kv == "follow=true") {
            st.follow_versions.push(version);
        }
        if is_job_create {
            st.job_creates += 1;
        }
        st.take_fault(method.as_str(), &target)
    });
    let mut after_commit = None;
    match fault {
        Some(FaultAction::Status(code)) => {
            return plain_error(
                code,
                format!("injected fault: {code} for {method} {target}"),
            );
        }
        Some(FaultAction::Delay(d)) => tokio::time::sleep(d).await,
        Some(FaultAction::AfterCommit(code)) => after_commit = Some(code),
        None => {}
    }
    if !authorized {
        return error(401, "Unauthorized", "Unauthorized", None);
    }
    let q = parse_query(&query);
    let resp = route(&shared, &method, &segs, &q, &content_type, body).await;
    if let Some(code) = after_commit {
        return plain_error(
            code,
            format!(
                "injected fault after the request was carried out: {code} for {method} {target}"
            ),
        );
    }
    resp
}

async fn route(
    shared: &Arc<Shared>,
    method: &Method,
    segs: &[&str],
    q: &HashMap<String, String>,
    content_type: &str,
    body: Bytes,
) -> Response {
    let not_allowed = || {
        plain_error(
            405,
            format!("the stand-in does not implement {method} here"),
        )
    };
    let (kind, ns, name, sub) = match segs {
        ["version"] => {
            return json_response(
                200,
                &json!({
                    "major": "1", "minor": "34", "gitVersion": "v1.34.0-coderun-stand-in",
                    "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                    "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"
                }),
            );
        }
        ["api", "v1", "namespaces", ns] if *method == Method::GET => {
            return json_response(
                200,
                &json!({
                    "kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
                }),
            );
        }
        ["api", "v1", "pods"] => (Kind::Pod, None, None, None),
        ["apis", "batch", "v1", "jobs"] => (Kind::Job, None, None, None),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => {
            (Kind::NetworkPolicy, None, None, None)
        }
        ["api", "v1", "namespaces", ns, "pods", rest @ ..] => (
            Kind::Pod,
            Some(*ns),
            rest.first().copied(),
            rest.get(1).copied(),
        ),
        ["apis", "batch", "v1", "namespaces", ns, "jobs", rest @ ..] => (
            Kind::Job,
            Some(*ns),
            rest.first().copied(),
            rest.get(1).copied(),
        ),
        [
            "apis",
            "networking.k8s.io",
            "v1",
            "namespaces",
            ns,
            "networkpolicies",
            rest @ ..,
        ] => (
            Kind::NetworkPolicy,
            Some(*ns),
            rest.first().copied(),
            rest.get(1).copied(),
        ),
        _ => return plain_error(404, "the server could not find the requested resource"),
    };
    if segs.len() > 8 || (sub.is_some() && segs.last() != sub.as_ref()) {
        return plain_error(404, "the server could not find the requested resource");
    }
    match (name, sub) {
        (None, _) => match *method {
            Method::GET if flag(q, "watch") => watch(shared, kind, ns, q),
            Method::GET => list(shared, kind, ns, q),
            Method::POST => match (kind, ns) {
                (Kind::Job, Some(ns)) => create_job(shared, ns, q, &body),
                (Kind::NetworkPolicy, Some(ns)) => create_other(shared, kind, ns, q, &body),
                _ => not_allowed(),
            },
            _ => not_allowed(),
        },
        (Some(name), None) => {
            let ns = ns.unwrap_or_default();
            match *method {
                Method::GET => get(shared, kind, ns, name),
                Method::DELETE => delete(shared, kind, ns, name, q, &body),
                Method::PUT if kind == Kind::NetworkPolicy => {
                    put_other(shared, kind, ns, name, &body)
                }
                Method::PATCH if kind == Kind::NetworkPolicy => {
                    patch_other(shared, kind, ns, name, content_type, &body)
                }
                _ => not_allowed(),
            }
        }
        (Some(name), Some("status")) if *method == Method::GET && kind != Kind::NetworkPolicy => {
            get(shared, kind, ns.unwrap_or_default(), name)
        }
        (Some(name), Some("log")) if *method == Method::GET && kind == Kind::Pod => {
            logs(shared, ns.unwrap_or_default(), name, q).await
        }
        (Some(_), Some("status" | "log")) => not_allowed(),
        _ => plain_error(404, "the server could not find the requested resource"),
    }
}

// ---------------------------------------------------------------- reads

fn selectors(
    kind: Kind,
    q: &HashMap<String, String>,
) -> Result<(LabelSelector, FieldSelector), Response> {
    let labels = LabelSelector::parse(
        q.get("labelSelector")
            .map(String::as_str)
            .unwrap_or_default(),
    )
    .map_err(|e| plain_error(400, e))?;
    let fields = FieldSelector::parse(
        q.get("fieldSelector")
            .map(String::as_str)
            .unwrap_or_default(),
        kind.selectable_fields(),
    )
    .map_err(|e| plain_error(400, e))?;
    Ok((labels, fields))
}

fn strip_type(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

fn list(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Response {
    let (labels, fields) = match selectors(kind, q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let limit: Option<usize> = match q.get("limit").map(|l| l.parse::<usize>()) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return plain_error(400, "limit must be an integer"),
    };
    let after = q
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(|c| c.trim_start_matches("standin:").to_string());
    shared.read(|st| {
        if let Some(rv) = q.get("resourceVersion").filter(|r| !r.is_empty() && *r != "0") {
            let Ok(n) = rv.parse::<u64>() else {
                return invalid_rv(rv);
            };
            let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
            if n > st.rv {
                return error(504, "Timeout", format!("Too large resource version: {n}, current: {}", st.rv), Some(json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1})));
            }
            if exact && n != st.rv {
                return error(410, "Expired", format!("too old resource version: {n} ({})", st.rv), None);
            }
        }
        let mut items: Vec<(String, Value)> = st
            .objects(kind, ns)
            .into_iter()
            .filter(|o| labels.matches(o) && fields.matches(o))
            .map(|o| {
                let key = format!(
                    "{}/{}",
                    o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default(),
                    o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
                );
                (key, o)
            })
            .collect();
        if let Some(after) = &after {
            items.retain(|(k, _)| k > after);
        }
        let mut cont = None;
        if let Some(limit) = limit
            && items.len() > limit
        {
            items.truncate(limit);
            cont = items.last().map(|(k, _)| format!("standin:{k}"));
        }
        let mut meta = json!({"resourceVersion": st.rv.to_string()});
        if let Some(c) = cont {
            meta["continue"] = Value::String(c);
        }
        json_response(
            200,
            &json!({
                "kind": format!("{}List", kind.kind()),
                "apiVersion": kind.api_version(),
                "metadata": meta,
                "items": items.into_iter().map(|(_, o)| strip_type(o)).collect::<Vec<_>>(),
            }),
        )
    })
}

fn invalid_rv(rv: &str) -> Response {
    plain_error(
        400,
        format!("invalid resource version \"{rv}\": the resource version must be a decimal number"),
    )
}

fn get(shared: &Arc<Shared>, kind: Kind, ns: &str, name: &str) -> Response {
    match shared.read(|st| st.object(kind, ns, name)) {
        Some(o) => json_response(200, &o),
        None => not_found(kind, name),
    }
}

// ---------------------------------------------------------------- watch

pub(crate) fn event_line(typ: &str, object: &Value) -> String {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        typ: &'a str,
        object: &'a Value,
    }
    let mut line = serde_json::to_string(&Event { typ, object }).expect("an event serializes");
    line.push('\n');
    line
}

fn expired_line(from: u64, current: u64) -> String {
    event_line(
        "ERROR",
        &status_object(
            410,
            "Expired",
            &format!("too old resource version: {from} ({current})"),
            None,
        ),
    )
}

fn bookmark_line(kind: Kind, rv: u64, initial_end: bool) -> String {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": kind.kind(), "apiVersion": kind.api_version(), "metadata": meta}),
    )
}

struct Watch {
    shared: Arc<Shared>,
    rx: tokio::sync::watch::Receiver<u64>,
    kind: Kind,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    cursor: u64,
    epoch: u64,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    done: bool,
}

impl Watch {
    fn matches(&self, kind: Kind, ns: &str, obj: &Value) -> bool {
        kind == self.kind
            && self.ns.as_deref().is_none_or(|n| n == ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    /// Collects what is due, or `None` when the stream should end.
    fn poll_state(&mut self, st: &State) -> Option<String> {
        if st.epoch != self.epoch {
            return None;
        }
        if self.cursor < st.history_start {
            self.done = true;
            return Some(expired_line(self.cursor, st.rv));
        }
        let mut out = String::new();
        // The history is in resource-version order: start after the cursor, not at the front.
        let first = st.history.partition_point(|c| c.rv <= self.cursor);
        for change in st.history.range(first..) {
            if self.matches(change.kind, &change.ns, &change.object) {
                out.push_str(&change.line);
            }
        }
        self.cursor = self.cursor.max(st.rv);
        Some(out)
    }

    async fn next_chunk(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        loop {
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            let shared = self.shared.clone();
            let due = shared.read(|st| self.poll_state(st))?;
            if !due.is_empty() {
                return Some((Ok(Bytes::from(due)), self));
            }
            tokio::select! {
                changed = self.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.done = true;
                    if self.bookmarks {
                        let rv = shared.read(|st| st.rv);
                        return Some((Ok(Bytes::from(bookmark_line(self.kind, rv, false))), self));
                    }
                    return None;
                }
            }
        }
    }
}

fn watch(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Response {
    let (labels, fields) = match selectors(kind, q) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bookmarks = flag(q, "allowWatchBookmarks");
    let send_initial = flag(q, "sendInitialEvents");
    if send_initial && !bookmarks {
        return error(
            422,
            "Invalid",
            "sendInitialEvents requires allowWatchBookmarks=true",
            None,
        );
    }
    let timeout = match q.get("timeoutSeconds").map(|t| t.parse::<u64>()) {
        None => 1800,
        Some(Ok(t)) => t,
        Some(Err(_)) => return plain_error(400, "timeoutSeconds must be an integer"),
    };
    let rv_param = q.get("resourceVersion").filter(|r| !r.is_empty()).cloned();
    let rx = shared.tick.subscribe();
    let mut w = Watch {
        shared: shared.clone(),
        rx,
        kind,
        ns: ns.map(str::to_string),
        labels,
        fields,
        cursor: 0,
        epoch: 0,
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        bookmarks,
        done: false,
    };
    let initial = shared.read(|st| -> Result<String, Response> {
        w.epoch = st.epoch;
        let mut out = String::new();
        match rv_param.as_deref() {
            None | Some("0") => {
                for o in st.objects(kind, ns) {
                    let obj_ns = o
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    if w.matches(kind, &obj_ns, &o) {
                        out.push_str(&event_line("ADDED", &o));
                    }
                }
                if send_initial {
                    out.push_str(&bookmark_line(kind, st.rv, true));
                }
                w.cursor = st.rv;
            }
            Some(rv) => {
                let Ok(n) = rv.parse::<u64>() else {
                    return Err(invalid_rv(rv));
                };
                if n < st.history_start {
                    w.done = true;
                    out.push_str(&expired_line(n, st.rv));
                }
                w.cursor = n;
            }
        }
        Ok(out)
    });
    let initial = match initial {
        Ok(i) => i,
        Err(r) => return r,
    };
    let head = futures::stream::iter(
        (!initial.is_empty()).then(|| Ok::<Bytes, Infallible>(Bytes::from(initial))),
    );
    let tail = futures::stream::unfold(w, Watch::next_chunk);
    let mut resp = Response::new(Body::from_stream(head.chain(tail)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

// ---------------------------------------------------------------- writes

fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice::<Value>(body)
        .map_err(|e| {
            plain_error(
                400,
                format!("couldn't get version/kind; json parse error: {e}"),
            )
        })
        .and_then(|v| {
            if v.is_object() {
                Ok(v)
            } else {
                Err(plain_error(400, "the body must be a JSON object"))
            }
        })
}

/// The checks every create shares: apiVersion/kind, namespace, no resourceVersion.
fn check_envelope(kind: Kind, ns: &str, v: &Value) -> Result<(), Response> {
    if let Some(k) = v.get("kind").and_then(Value::as_str)
        && k != kind.kind()
    {
        return Err(plain_error(
            400,
            format!(
                "the kind in the body ({k}) does not match the kind of the URL ({})",
                kind.kind()
            ),
        ));
    }
    if let Some(a) = v.get("apiVersion").and_then(Value::as_str)
        && a != kind.api_version()
    {
        return Err(plain_error(
            400,
            format!(
                "the API version in the data ({a}) does not match the expected API version ({})",
                kind.api_version()
            ),
        ));
    }
    if let Some(n) = v.pointer("/metadata/namespace").and_then(Value::as_str)
        && !n.is_empty()
        && n != ns
    {
        return Err(plain_error(
            400,
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if v.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|r| !r.is_empty())
    {
        return Err(plain_error(
            500,
            "resourceVersion should not be set on objects to be created",
        ));
    }
    Ok(())
}

fn dry_run(q: &HashMap<String, String>) -> bool {
    q.get("dryRun").is_some_and(|d| d == "All")
}

fn create_job(
    shared: &Arc<Shared>,
    ns: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = check_envelope(Kind::Job, ns, &v) {
        return r;
    }
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let causes = validate::validate_job(&v);
    if !causes.is_empty() {
        return invalid(Kind::Job, &name, &causes);
    }
    let job: Job = match serde_json::from_value(v) {
        Ok(j) => j,
        Err(e) => {
            return plain_error(
                400,
                format!("Job in version \"v1\" cannot be handled as a Job: {e}"),
            );
        }
    };
    let dry = dry_run(q);
    let result = shared.write(|st| {
        if !name.is_empty() && st.jobs.contains_key(&(ns.to_string(), name.clone())) {
            return Err(name.clone());
        }
        let restricted = st.restricted.contains(ns);
        let created = st.create_job(job, ns, dry);
        let warning = restricted
            .then(|| {
                created
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref())
                    .map(validate::restricted_violations)
            })
            .flatten()
            .filter(|v| !v.is_empty())
            .map(|v| {
                format!(
                    "299 - \"would violate PodSecurity \\\"restricted:latest\\\": {}\"",
                    v.join(", ")
                )
            });
        Ok((created, warning))
    });
    match result {
        Err(name) => error(
            409,
            "AlreadyExists",
            format!("jobs.batch \"{name}\" already exists"),
            Some(details(Kind::Job, &name)),
        ),
        Ok((job, warning)) => {
            let mut resp = json_response(201, &serde_json::to_value(&job).expect("job serializes"));
            if let Some(w) = warning.and_then(|w| HeaderValue::from_str(&w).ok()) {
                resp.headers_mut().insert("warning", w);
            }
            resp
        }
    }
}

fn stamp_new(v: &mut Value, ns: &str) {
    let meta = &mut v["metadata"];
    meta["namespace"] = Value::String(ns.to_string());
    meta["uid"] = Value::String(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = serde_json::to_value(now()).expect("time");
    meta["generation"] = json!(1);
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
}

fn set_type(v: &mut Value, kind: Kind) {
    v["kind"] = Value::String(kind.kind().into());
    v["apiVersion"] = Value::String(kind.api_version().into());
}

fn create_other(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let mut v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = check_envelope(kind, ns, &v) {
        return r;
    }
    let mut name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let causes = validate::validate_generic(&v);
    if !causes.is_empty() {
        return invalid(kind, &name, &causes);
    }
    if name.is_empty() {
        let base = v
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        name = format!("{base}{}", &uuid::Uuid::new_v4().simple().to_string()[..5]);
        v["metadata"]["name"] = Value::String(name.clone());
    }
    set_type(&mut v, kind);
    stamp_new(&mut v, ns);
    let dry = dry_run(q);
    let result = shared.write(|st| {
        if st
            .others
            .contains_key(&(kind, ns.to_string(), name.clone()))
        {
            return None;
        }
        Some(if dry {
            v
        } else {
            st.put_other(kind, ns, &name, v, "ADDED")
        })
    });
    match result {
        None => error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified()),
            Some(details(kind, &name)),
        ),
        Some(o) => json_response(201, &o),
    }
}

fn put_other(shared: &Arc<Shared>, kind: Kind, ns: &str, name: &str, body: &[u8]) -> Response {
    let mut v = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if v.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return plain_error(
            400,
            "the name of the object does not match the name on the URL",
        );
    }
    let causes = validate::validate_generic(&v);
    if !causes.is_empty() {
        return invalid(kind, name, &causes);
    }
    set_type(&mut v, kind);
    shared.write(|st| {
        let Some(old) = st.others.get(&(kind, ns.to_string(), name.to_string())).cloned() else {
            return not_found(kind, name);
        };
        let given = v.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
        if !given.is_empty() && Some(given) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            return error(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", kind.qualified()),
                Some(details(kind, name)),
            );
        }
        let new = replace_keeping_identity(&old, v.clone());
        json_response(200, &st.put_other(kind, ns, name, new, "MODIFIED"))
    })
}

fn replace_keeping_identity(old: &Value, mut new: Value) -> Value {
    for k in ["namespace", "uid", "creationTimestamp"] {
        new["metadata"][k] = old["metadata"][k].clone();
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = json!(if old.get("spec") != new.get("spec") {
        generation + 1
    } else {
        generation
    });
    new
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn patch_other(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    content_type: &str,
    body: &[u8],
) -> Response {
    let patch = match parse_body(body) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let apply = match media {
        "application/apply-patch+yaml" => true,
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        other => {
            return plain_error(
                415,
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            );
        }
    };
    shared.write(|st| {
        let old = st
            .others
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned();
        let new = match (old, apply) {
            (None, false) => return not_found(kind, name),
            (None, true) => {
                let mut v = patch.clone();
                if v.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
                    return plain_error(400, "metadata.name must match the name on the URL");
                }
                let causes = validate::validate_generic(&v);
                if !causes.is_empty() {
                    return invalid(kind, name, &causes);
                }
                set_type(&mut v, kind);
                stamp_new(&mut v, ns);
                return json_response(201, &st.put_other(kind, ns, name, v, "ADDED"));
            }
            (Some(old), true) => {
                // Server-side apply, simplified: the applied fields replace ours wholesale.
                let mut v = old.clone();
                for k in ["spec"] {
                    if let Some(s) = patch.get(k) {
                        v[k] = s.clone();
                    }
                }
                for k in ["labels", "annotations"] {
                    if let Some(s) = patch.pointer(&format!("/metadata/{k}")) {
                        v["metadata"][k] = s.clone();
                    }
                }
                replace_keeping_identity(&old, v)
            }
            (Some(old), false) => {
                let mut v = old.clone();
                merge_patch(&mut v, &patch);
                replace_keeping_identity(&old, v)
            }
        };
        let causes = validate::validate_generic(&new);
        if !causes.is_empty() {
            return invalid(kind, name, &causes);
        }
        json_response(200, &st.put_other(kind, ns, name, new, "MODIFIED"))
    })
}

fn delete(
    shared: &Arc<Shared>,
    kind: Kind,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match parse_body(body) {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| q.get("propagationPolicy").cloned());
    let dry = dry_run(q)
        || opts
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    let pre_uid = opts
        .pointer("/preconditions/uid")
        .and_then(Value::as_str)
        .map(str::to_string);
    let pre_rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    shared.write(|st| {
        st.deletes.push((kind.kind().to_string(), name.to_string(), policy.clone()));
        if let Some(p) = &policy
            && !matches!(p.as_str(), "Foreground" | "Background" | "Orphan")
        {
            return invalid(
                kind,
                name,
                &[validate::Cause {
                    field: "propagationPolicy".into(),
                    reason: "FieldValueNotSupported",
                    message: format!("Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""),
                }],
            );
        }
        let Some(current) = st.object(kind, ns, name) else { return not_found(kind, name) };
        let cur_uid = current.pointer("/metadata/uid").and_then(Value::as_str);
        let cur_rv = current.pointer("/metadata/resourceVersion").and_then(Value::as_str);
        if pre_uid.as_deref().is_some_and(|u| Some(u) != cur_uid) || pre_rv.as_deref().is_some_and(|r| Some(r) != cur_rv) {
            return error(
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {} \"{name}\": Precondition failed", kind.qualified()),
                Some(details(kind, name)),
            );
        }
        let success = || {
            let mut d = details(kind, name);
            d["uid"] = json!(cur_uid);
            json_response(200, &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}))
        };
        if dry {
            return json_response(200, &current);
        }
        match kind {
            Kind::Job => match st.delete_job(ns, name, policy.as_deref()) {
                Some((job, true)) => json_response(200, &serde_json::to_value(job).expect("json")),
                Some((_, false)) => success(),
                None => not_found(kind, name),
            },
            Kind::Pod => match st.delete_pod(ns, name, true) {
                Some(pod) => json_response(200, &serde_json::to_value(pod).expect("json")),
                None => not_found(kind, name),
            },
            Kind::NetworkPolicy => {
                st.remove_other(kind, ns, name);
                success()
            }
        }
    })
}

// ---------------------------------------------------------------- logs

/// The container the request names (or the only one), if its log can be read.
fn log_container(
    st: &State,
    ns: &str,
    pod_name: &str,
    container: Option<&str>,
) -> Result<String, Response> {
    let Some(pod) = st.pods.get(&(ns.to_string(), pod_name.to_string())) else {
        return Err(not_found(Kind::Pod, pod_name));
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let mains: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let inits: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    let name = match container {
        Some(c) if mains.iter().chain(inits.iter()).any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(plain_error(
                400,
                format!("container {c} is not valid for pod {pod_name}"),
            ));
        }
        None if mains.len() == 1 => mains[0].clone(),
        None => {
            return Err(plain_error(
                400,
                format!(
                    "a container name must be specified for pod {pod_name}, choose one of: [{}] or one of the init containers: [{}]",
                    mains.join(" "),
                    inits.join(" ")
                ),
            ));
        }
    };
    let status = pod.status.clone().unwrap_or_default();
    let cs = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|cs| cs.name == name)
        .cloned();
    let waiting = match cs.as_ref().and_then(|c| c.state.clone()) {
        None => Some("ContainerCreating".to_string()),
        Some(s) if s.running.is_some() || s.terminated.is_some() => None,
        Some(s) => Some(
            s.waiting
                .and_then(|w| w.reason)
                .unwrap_or_else(|| "ContainerCreating".into()),
        ),
    };
    if let Some(reason) = waiting {
        let reason = match reason.as_str() {
            "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image".to_string(),
            _ => reason,
        };
        return Err(plain_error(
            400,
            format!("container \"{name}\" in pod \"{pod_name}\" is waiting to start: {reason}"),
        ));
    }
    Ok(name)
}

fn container_done(st: &State, ns: &str, pod_name: &str, container: &str) -> bool {
    let Some(pod) = st.pods.get(&(ns.to_string(), pod_name.to_string())) else {
        return true;
    };
    if is_terminal(pod) {
        return true;
    }
    let status = pod.status.clone().unwrap_or_default();
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|cs| cs.name == container)
        .is_none_or(|cs| cs.state.as_ref().is_some_and(|s| s.terminated.is_some()))
}

fn tail_offset(text: &str, lines: Option<usize>) -> usize {
    let Some(n) = lines else { return 0 };
    if n == 0 {
        return text.len();
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut count = 0;
    for (i, b) in body.bytes().enumerate().rev() {
        if b == b'\n' {
            count += 1;
            if count == n {
                return i + 1;
            }
        }
    }
    0
}

async fn logs(shared: &Arc<Shared>, ns: &str, pod: &str, q: &HashMap<String, String>) -> Response {
    if flag(q, "previous") {
        return plain_error(
            400,
            format!("previous terminated container in pod \"{pod}\" not found"),
        );
    }
    let limit: Option<usize> = match q.get("limitBytes").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(n)) if n > 0 => Some(n),
        _ => return plain_error(422, "limitBytes must be a positive integer"),
    };
    let tail: Option<usize> = match q.get("tailLines").map(|l| l.parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        _ => return plain_error(422, "tailLines must be a non-negative integer"),
    };
    let container = match shared
        .read(|st| log_container(st, ns, pod, q.get("container").map(String::as_str)))
    {
        Ok(c) => c,
        Err(r) => return r,
    };
    let key = (ns.to_string(), pod.to_string(), container.clone());
    let text = |st: &State| st.logs.get(&key).cloned().unwrap_or_default();
    let cut = |s: &str, budget: Option<usize>| -> String {
        match budget {
            Some(b) if s.len() > b => String::from_utf8_lossy(&s.as_bytes()[..b]).into_owned(),
            _ => s.to_string(),
        }
    };
    let ok = |body: Body| {
        let mut resp = Response::new(body);
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp
    };
    if !flag(q, "follow") {
        let all = shared.read(text);
        let from = tail_offset(&all, tail);
        return ok(Body::from(cut(&all[from..], limit)));
    }
    struct Follow {
        shared: Arc<Shared>,
        rx: tokio::sync::watch::Receiver<u64>,
        key: (String, String, String),
        offset: Option<usize>,
        tail: Option<usize>,
        budget: Option<usize>,
    }
    let follow = Follow {
        shared: shared.clone(),
        rx: shared.tick.subscribe(),
        key,
        offset: None,
        tail,
        budget: limit,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if f.budget == Some(0) {
                return None;
            }
            f.rx.borrow_and_update();
            let (chunk, done) = f.shared.read(|st| {
                let all = st.logs.get(&f.key).cloned().unwrap_or_default();
                let from = *f.offset.get_or_insert_with(|| tail_offset(&all, f.tail));
                let from = from.min(all.len());
                let chunk = all[from..].to_string();
                f.offset = Some(all.len());
                (chunk, container_done(st, &f.key.0, &f.key.1, &f.key.2))
            });
            if !chunk.is_empty() {
                let chunk = match f.budget {
                    Some(b) if chunk.len() > b => {
                        String::from_utf8_lossy(&chunk.as_bytes()[..b]).into_owned()
                    }
                    _ => chunk,
                };
                if let Some(b) = f.budget.as_mut() {
                    *b -= chunk.len().min(*b);
                }
                return Some((Ok::<Bytes, Infallible>(Bytes::from(chunk)), f));
            }
            if done {
                return None;
            }
            if f.rx.changed().await.is_err() {
                return None;
            }
        }
    });
    ok(Body::from_stream(stream))
}
