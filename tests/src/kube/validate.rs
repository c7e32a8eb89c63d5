//! The API server's validation, for the fields the executor sets: object names, labels and
//! annotations, the Job and pod template, quantities, and the Pod Security "restricted" profile.
//!
//! Validation runs on the JSON body before it is decoded, as the API server's does, so a missing
//! container name is a 422 `Invalid` (as on a cluster), not a decoding error.

use serde_json::Value;

const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const QUALIFIED_NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?`, at most 63 characters (empty allowed).
pub(crate) fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A qualified name: an optional DNS-1123 subdomain prefix and `/`, then a name part that is a
/// non-empty label value.
pub(crate) fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// One field error, as the API server reports it in `details.causes`.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) field: String,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Cause {
    fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {}: {detail}", short(value)),
        }
    }
    fn required(field: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self {
            field: field.into(),
            reason: "FieldValueRequired",
            message,
        }
    }
    fn unsupported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("\"{s}\"")).collect();
        Self {
            field: field.into(),
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {}: supported values: {}",
                short(value),
                supported.join(", ")
            ),
        }
    }
    fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {}", short(value)),
        }
    }
    fn not_found(field: impl Into<String>, value: &Value) -> Self {
        Self {
            field: field.into(),
            reason: "FieldValueNotFound",
            message: format!("Not found: {}", short(value)),
        }
    }

    /// `field: message`, as in the Status message.
    pub(crate) fn line(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

/// Parses a Kubernetes quantity (`100m`, `1.5Gi`, `1e3`, `128974848`) into a plain number.
pub(crate) fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num[1..].contains(['+', '-']) {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(n * mult)
}

fn validate_labels(v: Option<&Value>, field: &str, errs: &mut Vec<Cause>) {
    let Some(v) = v else { return };
    let Some(map) = v.as_object() else {
        errs.push(Cause::invalid(field, v, "must be an object of strings"));
        return;
    };
    for (k, val) in map {
        if !is_label_key(k) {
            errs.push(Cause::invalid(
                field,
                &Value::String(k.clone()),
                QUALIFIED_NAME_MSG,
            ));
        }
        match val.as_str() {
            Some(s) if is_label_value(s) => {}
            Some(s) if s.len() > 63 => errs.push(Cause::invalid(
                field,
                val,
                "must be no more than 63 characters",
            )),
            _ => errs.push(Cause::invalid(field, val, LABEL_VALUE_MSG)),
        }
    }
}

fn validate_annotations(v: Option<&Value>, field: &str, errs: &mut Vec<Cause>) {
    let Some(map) = v.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    for (k, val) in map {
        if !is_label_key(k) {
            errs.push(Cause::invalid(
                field,
                &Value::String(k.clone()),
                QUALIFIED_NAME_MSG,
            ));
        }
        total += k.len() + val.as_str().map_or(0, str::len);
    }
    if total > 256 * 1024 {
        errs.push(Cause {
            field: field.into(),
            reason: "FieldValueTooLong",
            message: "Too long: may not be more than 262144 bytes".into(),
        });
    }
}

/// `metadata` of a namespaced object to be created: name (or generateName), labels, annotations.
/// `max_name` is 63 for Jobs (the name becomes a label value) and 253 otherwise.
pub(crate) fn validate_object_meta(meta: Option<&Value>, max_name: usize, errs: &mut Vec<Cause>) {
    let empty = Value::Object(Default::default());
    let meta = meta.unwrap_or(&empty);
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let generate = meta
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() && generate.is_empty() {
        errs.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else if !name.is_empty() {
        let v = Value::String(name.to_string());
        if !is_dns1123_subdomain(name) {
            errs.push(Cause::invalid("metadata.name", &v, DNS1123_SUBDOMAIN_MSG));
        } else if name.len() > max_name {
            errs.push(Cause::invalid(
                "metadata.name",
                &v,
                &format!("must be no more than {max_name} characters"),
            ));
        }
    }
    validate_labels(meta.get("labels"), "metadata.labels", errs);
    validate_annotations(meta.get("annotations"), "metadata.annotations", errs);
}

fn validate_nonneg(v: Option<&Value>, field: &str, min: i64, errs: &mut Vec<Cause>) {
    if let Some(v) = v
        && !v.is_null()
    {
        match v.as_i64() {
            Some(n) if n >= min => {}
            _ => errs.push(Cause::invalid(
                field,
                v,
                &format!("must be greater than or equal to {min}"),
            )),
        }
    }
}

fn validate_resources(res: &Value, field: &str, errs: &mut Vec<Cause>) {
    let mut parsed = std::collections::BTreeMap::new();
    for which in ["limits", "requests"] {
        let Some(map) = res.get(which).and_then(Value::as_object) else {
            continue;
        };
        for (name, q) in map {
            let f = format!("{field}.{which}[{name}]");
            match q.as_str().and_then(parse_quantity) {
                Some(n) if n >= 0.0 => {
                    parsed.insert((which, name.clone()), n);
                }
                Some(_) => errs.push(Cause::invalid(f, q, "must be greater than or equal to 0")),
                None => errs.push(Cause::invalid(f, q, "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")),
            }
        }
    }
    for ((which, name), req) in &parsed {
        if *which != "requests" {
            continue;
        }
        if let Some(limit) = parsed.get(&("limits", name.clone()))
            && req > limit
        {
            errs.push(Cause::invalid(
                format!("{field}.requests"),
                &res["requests"][name.as_str()],
                &format!(
                    "must be less than or equal to {name} limit of {}",
                    short(&res["limits"][name.as_str()]).trim_matches('"')
                ),
            ));
        }
    }
}

/// The pod template's spec of a Job (`spec.template.spec`).
fn validate_pod_spec(spec: Option<&Value>, field: &str, errs: &mut Vec<Cause>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        errs.push(Cause::required(format!("{field}.containers"), ""));
        return;
    };
    // Volumes: DNS-1123 label names, unique; emptyDir sizeLimit is a quantity.
    let mut volumes = std::collections::BTreeSet::new();
    if let Some(vols) = spec.get("volumes").and_then(Value::as_array) {
        for (i, vol) in vols.iter().enumerate() {
            let f = format!("{field}.volumes[{i}].name");
            match vol.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(Cause::required(f, "")),
                Some(n) if !is_dns1123_label(n) => {
                    errs.push(Cause::invalid(f, &vol["name"], DNS1123_LABEL_MSG))
                }
                Some(n) => {
                    if !volumes.insert(n.to_string()) {
                        errs.push(Cause::duplicate(f, &vol["name"]));
                    }
                }
            }
            if let Some(q) = vol.pointer("/emptyDir/sizeLimit")
                && q.as_str().and_then(parse_quantity).is_none()
            {
                errs.push(Cause::invalid(
                    format!("{field}.volumes[{i}].emptyDir.sizeLimit"),
                    q,
                    "must be a quantity",
                ));
            }
        }
    }
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        errs.push(Cause::required(format!("{field}.containers"), ""));
    }
    let mut names = std::collections::BTreeSet::new();
    let groups = [
        (
            "initContainers",
            spec.get("initContainers").and_then(Value::as_array),
        ),
        ("containers", containers),
    ];
    for (group, list) in groups {
        for (i, c) in list.into_iter().flatten().enumerate() {
            let f = format!("{field}.{group}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => errs.push(Cause::required(format!("{f}.name"), "")),
                Some(n) if !is_dns1123_label(n) => errs.push(Cause::invalid(
                    format!("{f}.name"),
                    &c["name"],
                    DNS1123_LABEL_MSG,
                )),
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        errs.push(Cause::duplicate(format!("{f}.name"), &c["name"]));
                    }
                }
            }
            match c.get("image").and_then(Value::as_str) {
                None | Some("") => errs.push(Cause::required(format!("{f}.image"), "")),
                Some(img) if img.trim() != img => errs.push(Cause::invalid(
                    format!("{f}.image"),
                    &c["image"],
                    "must not have leading or trailing whitespace",
                )),
                Some(_) => {}
            }
            let mut paths = std::collections::BTreeSet::new();
            for (j, m) in c
                .get("volumeMounts")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mf = format!("{f}.volumeMounts[{j}]");
                match m.get("name").and_then(Value::as_str) {
                    None | Some("") => errs.push(Cause::required(format!("{mf}.name"), "")),
                    Some(n) if !volumes.contains(n) => {
                        errs.push(Cause::not_found(format!("{mf}.name"), &m["name"]))
                    }
                    Some(_) => {}
                }
                match m.get("mountPath").and_then(Value::as_str) {
                    None | Some("") => errs.push(Cause::required(format!("{mf}.mountPath"), "")),
                    Some(p) => {
                        if !paths.insert(p.to_string()) {
                            errs.push(Cause::invalid(
                                format!("{mf}.mountPath"),
                                &m["mountPath"],
                                "must be unique",
                            ));
                        }
                    }
                }
            }
            if let Some(res) = c.get("resources") {
                validate_resources(res, &format!("{f}.resources"), errs);
            }
            if let Some(p) = c.get("imagePullPolicy")
                && !matches!(p.as_str(), Some("Always" | "IfNotPresent" | "Never"))
            {
                errs.push(Cause::unsupported(
                    format!("{f}.imagePullPolicy"),
                    p,
                    &["Always", "IfNotPresent", "Never"],
                ));
            }
        }
    }
    match spec.get("restartPolicy").and_then(Value::as_str) {
        Some("Never" | "OnFailure") => {}
        None => errs.push(Cause::required(
            format!("{field}.restartPolicy"),
            "valid values: \"OnFailure\", \"Never\"",
        )),
        Some(_) => errs.push(Cause::unsupported(
            format!("{field}.restartPolicy"),
            &spec["restartPolicy"],
            &["OnFailure", "Never"],
        )),
    }
    validate_nonneg(
        spec.get("activeDeadlineSeconds"),
        &format!("{field}.activeDeadlineSeconds"),
        1,
        errs,
    );
    validate_nonneg(
        spec.get("terminationGracePeriodSeconds"),
        &format!("{field}.terminationGracePeriodSeconds"),
        0,
        errs,
    );
}

/// A `batch/v1` Job to be created.
pub(crate) fn validate_job(job: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    validate_object_meta(job.get("metadata"), 63, &mut errs);
    let empty = Value::Object(Default::default());
    let spec = job.get("spec").unwrap_or(&empty);
    validate_nonneg(
        spec.get("activeDeadlineSeconds"),
        "spec.activeDeadlineSeconds",
        1,
        &mut errs,
    );
    validate_nonneg(spec.get("backoffLimit"), "spec.backoffLimit", 0, &mut errs);
    validate_nonneg(
        spec.get("ttlSecondsAfterFinished"),
        "spec.ttlSecondsAfterFinished",
        0,
        &mut errs,
    );
    validate_nonneg(spec.get("parallelism"), "spec.parallelism", 0, &mut errs);
    validate_nonneg(spec.get("completions"), "spec.completions", 0, &mut errs);
    if let Some(mode) = spec.get("completionMode")
        && !matches!(mode.as_str(), Some("NonIndexed" | "Indexed"))
    {
        errs.push(Cause::unsupported(
            "spec.completionMode",
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    let manual = spec
        .get("manualSelector")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some(sel) = spec.get("selector").filter(|s| !s.is_null())
        && !manual
    {
        errs.push(Cause::invalid(
            "spec.selector",
            sel,
            "`selector` will be auto-generated",
        ));
    }
    if manual {
        errs.push(Cause::unsupported(
            "spec.manualSelector",
            &Value::Bool(true),
            &["false (the stand-in generates selectors)"],
        ));
    }
    let template = spec.get("template");
    validate_labels(
        template.and_then(|t| t.pointer("/metadata/labels")),
        "spec.template.metadata.labels",
        &mut errs,
    );
    validate_annotations(
        template.and_then(|t| t.pointer("/metadata/annotations")),
        "spec.template.metadata.annotations",
        &mut errs,
    );
    validate_pod_spec(
        template.and_then(|t| t.get("spec")),
        "spec.template.spec",
        &mut errs,
    );
    if let Some(pfp) = spec.get("podFailurePolicy").filter(|p| !p.is_null()) {
        if template
            .and_then(|t| t.pointer("/spec/restartPolicy"))
            .and_then(Value::as_str)
            != Some("Never")
        {
            errs.push(Cause::invalid(
                "spec.template.spec.restartPolicy",
                template
                    .and_then(|t| t.pointer("/spec/restartPolicy"))
                    .unwrap_or(&Value::Null),
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        for (i, rule) in pfp
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let action = rule.get("action").unwrap_or(&Value::Null);
            if !matches!(
                action.as_str(),
                Some("FailJob" | "Ignore" | "Count" | "FailIndex")
            ) {
                errs.push(Cause::unsupported(
                    format!("spec.podFailurePolicy.rules[{i}].action"),
                    action,
                    &["Count", "FailIndex", "FailJob", "Ignore"],
                ));
            }
            let codes = rule.get("onExitCodes").filter(|v| !v.is_null());
            let conds = rule.get("onPodConditions").filter(|v| !v.is_null());
            if codes.is_some() == conds.is_some() {
                errs.push(Cause::invalid(
                    format!("spec.podFailurePolicy.rules[{i}]"),
                    &Value::String("rule".into()),
                    "specifying one of OnExitCodes and OnPodConditions is required",
                ));
            }
        }
    }
    errs
}

/// Any other namespaced object the stand-in stores (NetworkPolicies): metadata only.
pub(crate) fn validate_generic(obj: &Value) -> Vec<Cause> {
    let mut errs = Vec::new();
    validate_object_meta(obj.get("metadata"), 253, &mut errs);
    errs
}

/// The Pod Security Standards "restricted" profile (latest), as the admission plugin checks it on
/// pods. Returns the violations in the API server's wording.
pub(crate) fn restricted_violations(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    let psc = spec.security_context.clone().unwrap_or_default();
    let all: Vec<&k8s_openapi::api::core::v1::Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .collect();
    let quote = |names: &[String]| {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plural = |names: &[String]| {
        if names.len() == 1 {
            "container"
        } else {
            "containers"
        }
    };

    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        out.push("host namespaces (hostNetwork=true, hostPID=true or hostIPC=true)".to_string());
    }
    let privileged: Vec<String> = all
        .iter()
        .filter(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true))
        .map(|c| c.name.clone())
        .collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} {} must not set securityContext.privileged=true)",
            plural(&privileged),
            quote(&privileged)
        ));
    }
    let bad_volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            !(v.config_map.is_some()
                || v.csi.is_some()
                || v.downward_api.is_some()
                || v.empty_dir.is_some()
                || v.ephemeral.is_some()
                || v.persistent_volume_claim.is_some()
                || v.projected.is_some()
                || v.secret.is_some()
                || v.image.is_some())
        })
        .map(|v| v.name.clone())
        .collect();
    if !bad_volumes.is_empty() {
        out.push(format!(
            "restricted volume types (volumes {} use restricted volume types)",
            quote(&bad_volumes)
        ));
    }
    let escalation: Vec<String> = all
        .iter()
        .filter(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.allow_privilege_escalation)
                != Some(false)
        })
        .map(|c| c.name.clone())
        .collect();
    if !escalation.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} {} must set securityContext.allowPrivilegeEscalation=false)",
            plural(&escalation),
            quote(&escalation)
        ));
    }
    let caps: Vec<String> = all
        .iter()
        .filter(|c| {
            let caps = c
                .security_context
                .as_ref()
                .and_then(|s| s.capabilities.as_ref());
            let drops_all = caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            let adds_only_bind = caps
                .and_then(|c| c.add.as_ref())
                .is_none_or(|a| a.iter().all(|x| x == "NET_BIND_SERVICE"));
            !(drops_all && adds_only_bind)
        })
        .map(|c| c.name.clone())
        .collect();
    if !caps.is_empty() {
        out.push(format!(
            "unrestricted capabilities ({} {} must set securityContext.capabilities.drop=[\"ALL\"])",
            plural(&caps),
            quote(&caps)
        ));
    }
    let pod_non_root = psc.run_as_non_root == Some(true);
    let non_root: Vec<String> = all
        .iter()
        .filter(|c| {
            let own = c.security_context.as_ref().and_then(|s| s.run_as_non_root);
            !(own == Some(true) || (own.is_none() && pod_non_root))
        })
        .map(|c| c.name.clone())
        .collect();
    if psc.run_as_non_root == Some(false) || !non_root.is_empty() {
        out.push(format!(
            "runAsNonRoot != true (pod or {} {} must set securityContext.runAsNonRoot=true)",
            plural(&non_root),
            quote(&non_root)
        ));
    }
    let root_user = psc.run_as_user == Some(0)
        || all
            .iter()
            .any(|c| c.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0));
    if root_user {
        out.push("runAsUser=0 (pod and containers must not set runAsUser=0)".to_string());
    }
    let seccomp_ok = |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
        p.map(|p| p.type_.as_str())
            .map(|t| t == "RuntimeDefault" || t == "Localhost")
    };
    let pod_seccomp = seccomp_ok(psc.seccomp_profile.as_ref());
    let seccomp: Vec<String> = all
        .iter()
        .filter(|c| {
            let own = seccomp_ok(
                c.security_context
                    .as_ref()
                    .and_then(|s| s.seccomp_profile.as_ref()),
            );
            !(own == Some(true) || (own.is_none() && pod_seccomp == Some(true)))
        })
        .map(|c| c.name.clone())
        .collect();
    if pod_seccomp == Some(false) || !seccomp.is_empty() {
        out.push(format!(
            "seccompProfile (pod or {} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            plural(&seccomp),
            quote(&seccomp)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_labels_follow_the_api_server_rules() {
        assert!(is_dns1123_subdomain("run-1.abc"));
        assert!(!is_dns1123_subdomain("Run-1"));
        assert!(!is_dns1123_subdomain("run-"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(is_dns1123_label("main"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_label_value(""));
        assert!(is_label_value("My_value.1"));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"a".repeat(64)));
        assert!(is_label_key("coderun.dev/run-id"));
        assert!(!is_label_key("Coderun.dev/run-id"));
        assert!(!is_label_key("coderun.dev/"));
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("1Gi"), Some(1024f64.powi(3)));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1K"), None);
        assert_eq!(parse_quantity("abc"), None);
    }

    #[test]
    fn job_validation_reports_each_field() {
        let job = json!({
            "metadata": {"name": "x".repeat(64), "labels": {"ok": "v", "bad": "-v"}},
            "spec": {"template": {"spec": {
                "containers": [{"name": "", "image": "img",
                    "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
                    "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}],
                "restartPolicy": "Always"
            }}}
        });
        let fields: Vec<String> = validate_job(&job).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels",
                "spec.template.spec.containers[0].name",
                "spec.template.spec.containers[0].volumeMounts[0].name",
                "spec.template.spec.containers[0].resources.requests",
                "spec.template.spec.restartPolicy",
            ]
        );
        let ok = json!({"metadata": {"name": "ok"}, "spec": {"template": {"spec": {
            "containers": [{"name": "main", "image": "img"}], "restartPolicy": "Never"}}}});
        assert!(validate_job(&ok).is_empty());
    }
}
