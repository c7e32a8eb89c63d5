//! The OpenAPI document. Its operations come from the route declarations
//! ([`crate::routes::api`]), the same ones the router is built from; this module adds what the
//! shared machinery makes every route answer, so that no annotation has to repeat it and none
//! can forget it:
//!
//! - every error is an RFC 9457 problem, `application/problem+json` ([`crate::error`]);
//! - a route behind the bearer token may answer 401; a route with a path parameter 404 (a
//!   malformed id names nothing); a route with query parameters 400; a route that takes a JSON
//!   body 400 (not JSON), 413 (too large), 415 (not `application/json`) and 422 (the wrong
//!   shape); every route that reads Postgres, Redis or S3 503 with `Retry-After`;
//! - the rules the edge enforces on values ([`rules`]): lengths, ranges and patterns of names,
//!   paths, commands and query parameters, and the values that come from the settings (the
//!   languages and specs a request may name, the page size, the depth and length of paths).
//!
//! JSON Schema counts characters; where the server counts UTF-8 bytes (passwords, commands,
//! paths) the schema's `maxLength` is that number and the description says bytes.
//!
//! axum's catch-all segment `{*path}` becomes the OpenAPI parameter `{path}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use coderun_shared::config::Settings;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::schema::{
    AllOf, AnyOf, ArrayBuilder, ArrayItems, Object, ObjectBuilder, Schema,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    Content, HeaderBuilder, OpenApi as Document, PathItem, RefOr, Required, Response,
    ResponseBuilder, Type,
};
use utoipa::{Modify, OpenApi};

use crate::error::Problem;

/// The document's fixed parts; [`crate::routes::api`] adds the operations.
#[derive(OpenApi)]
#[openapi(
    info(title = "coderun", description = "Keep code tasks, edit their files, run them in sandboxes."),
    components(schemas(Problem)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Operations whose body may be left out entirely: an empty submission takes every default,
/// an empty file save (of a task or a dataset draft) stores an empty file.
const OPTIONAL_BODIES: [&str; 6] = [
    "submit_run",
    "save_file",
    "put_dataset_file",
    "start_pipeline_run",
    "approve_stage",
    "reject_stage",
];

/// Operations that touch no dependency, hence never answer 503.
const WITHOUT_DEPENDENCIES: [&str; 3] = ["/healthz", "/metrics", "/api/v1/openapi.json"];

/// The document for the compiled default settings: what `coderun-functions openapi` prints and
/// `web/openapi.json` holds.
pub fn document() -> Document {
    let defaults = Settings::with_overrides([("local_stack", "true".to_owned())])
        .expect("the compiled defaults are valid settings");
    document_for(&defaults)
}

/// The document a server with `settings` serves.
pub fn document_for(settings: &Settings) -> Document {
    let (_, document) = crate::routes::api(&settings.limits).split_for_parts();
    finish(document, settings)
}

/// The document as `coderun-functions openapi` prints it (and `web/openapi.json` holds it):
/// pretty JSON ending with a newline.
pub fn pretty_json() -> serde_json::Result<String> {
    let mut text = serde_json::to_string_pretty(&document())?;
    text.push('\n');
    Ok(text)
}

/// The served document, serialized once when the router is built.
#[derive(Clone)]
pub struct ServedDocument(Arc<Bytes>);

impl ServedDocument {
    pub fn new(document: &Document) -> serde_json::Result<Self> {
        Ok(Self(Arc::new(Bytes::from(serde_json::to_vec(document)?))))
    }

    pub fn json(&self) -> Bytes {
        self.0.as_ref().clone()
    }
}

/// Adds the answers and rules shared by every route (see the module's header) to the
/// operations the route declarations produced.
pub fn finish(mut document: Document, settings: &Settings) -> Document {
    let rules = rules(settings);
    let paths = std::mem::take(&mut document.paths.paths);
    for (path, mut item) in paths {
        let path = path.replace("{*", "{");
        let touches_dependencies = !WITHOUT_DEPENDENCIES.contains(&path.as_str());
        let shared_parameters = item.parameters.clone().unwrap_or_default();
        for operation in operations(&mut item) {
            add_shared_answers(operation, &shared_parameters, touches_dependencies);
            if let Some(body) = operation.request_body.as_mut()
                && OPTIONAL_BODIES.contains(&operation.operation_id.as_deref().unwrap_or(""))
            {
                body.required = Some(Required::False);
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                if status.starts_with('4') || status.starts_with('5') {
                    as_problem(response);
                }
            }
            for parameter in operation.parameters.iter_mut().flatten() {
                apply_rules_to_parameter(parameter, &path, &rules);
            }
        }
        document.paths.paths.insert(path, item);
    }
    apply_rules_to_users_csv(&mut document, &rules);
    apply_rules_to_file_body(&mut document, &rules);
    if let Some(components) = document.components.as_mut() {
        apply_rules_to_schemas(&mut components.schemas, &rules);
    }
    document
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn problem(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            PROBLEM_JSON,
            Content::new(Some(utoipa::openapi::Ref::from_schema_name("Problem"))),
        )
        .build()
}

fn with_retry_after(mut response: Response) -> Response {
    response.headers.insert(
        "Retry-After".to_owned(),
        HeaderBuilder::new()
            .schema(Object::with_type(Type::Integer))
            .description(Some("seconds to wait before trying again"))
            .build(),
    );
    response
}

fn add_shared_answers(
    operation: &mut Operation,
    shared_parameters: &[Parameter],
    touches_dependencies: bool,
) {
    let parameters: Vec<&Parameter> = shared_parameters
        .iter()
        .chain(operation.parameters.iter().flatten())
        .collect();
    let has = |place: ParameterIn| {
        parameters
            .iter()
            .any(|p| std::mem::discriminant(&p.parameter_in) == std::mem::discriminant(&place))
    };
    let mut shared: Vec<(&str, Response)> = Vec::new();
    if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
        shared.push(("401", problem("missing or invalid bearer token")));
    }
    if has(ParameterIn::Path) {
        shared.push((
            "404",
            problem("no such resource, or one the caller may not see"),
        ));
    }
    if has(ParameterIn::Query) {
        shared.push(("400", problem("a query parameter breaks a rule")));
    }
    if operation.request_body.as_ref().is_some_and(takes_json) {
        shared.push((
            "400",
            problem("the body is not valid JSON, or a value breaks a rule"),
        ));
        shared.push(("413", problem("the body is too large")));
        shared.push(("415", problem("the body is not `application/json`")));
        shared.push(("422", problem("the body is JSON of the wrong shape")));
    }
    if touches_dependencies {
        shared.push((
            "503",
            with_retry_after(problem(
                "Postgres, Redis or object storage is briefly unavailable; nothing was changed",
            )),
        ));
    }
    for (status, response) in shared {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert(RefOr::T(response));
    }
}

fn takes_json(body: &RequestBody) -> bool {
    body.content.keys().any(|media| media == "application/json")
}

/// An error answer documented with a JSON body is a problem document.
fn as_problem(response: &mut RefOr<Response>) {
    let RefOr::T(response) = response else {
        return;
    };
    if let Some(content) = response.content.shift_remove("application/json") {
        response.content.insert(PROBLEM_JSON.to_owned(), content);
    }
}

/// The rules the edge enforces on one value, as JSON Schema keywords.
#[derive(Clone, Default)]
struct Rule {
    min_length: Option<usize>,
    max_length: Option<usize>,
    pattern: Option<String>,
    minimum: Option<i64>,
    maximum: Option<i64>,
    enum_values: Option<Vec<String>>,
}

impl Rule {
    fn apply(&self, schema: &mut Object) {
        if self.min_length.is_some() {
            schema.min_length = self.min_length;
        }
        if self.max_length.is_some() {
            schema.max_length = self.max_length;
        }
        if let Some(pattern) = &self.pattern {
            schema.pattern = Some(pattern.clone());
        }
        if let Some(minimum) = self.minimum {
            schema.minimum = Some(utoipa::Number::Int(minimum as isize));
        }
        if let Some(maximum) = self.maximum {
            schema.maximum = Some(utoipa::Number::Int(maximum as isize));
        }
        if let Some(values) = &self.enum_values {
            schema.enum_values = Some(values.iter().map(|v| v.as_str().into()).collect());
        }
    }
}

/// Every rule of [`rules`], by the value it governs.
struct Rules {
    file_path: Rule,
    task_name: Rule,
    description: Rule,
    command: Rule,
    remarks: Rule,
    username: Rule,
    password: Rule,
    search: Rule,
    list_page: Rule,
    log_page: Rule,
    per_page: Rule,
    language: Rule,
    spec: Rule,
    status: Rule,
    role: Rule,
    idempotency_key: Rule,
    users_csv: Rule,
    file_content: Rule,
    dataset_name: Rule,
    dataset_version: Rule,
    dataset_ref: Rule,
    dataset_title: Rule,
    sha256: Rule,
    webhook_url: Rule,
    webhook_event: Rule,
}

/// The characters of Unicode's control category (what `char::is_control` refuses).
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";
/// What Rust's `trim` removes (Unicode White_Space), spelled out: a regex's `\s` differs.
const BLANK: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Invisible and bidirectional characters a path may not hold.
const INVISIBLE: &str =
    r"\xad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff";

/// Text without a NUL character (which Postgres cannot keep in text).
fn no_nul_text() -> Option<String> {
    Some(r"^[^\x00]*$".to_owned())
}

/// A CSV header naming a column, in any case, with blanks around it.
fn csv_column(name: &str) -> String {
    let letters: String = name
        .chars()
        .map(|c| format!("[{}{}]", c.to_ascii_uppercase(), c))
        .collect();
    format!("[ \\t]*{letters}[ \\t]*")
}

/// The rules of the validated types at the edge (`coderun_shared::domain`, the route modules),
/// with the limits `settings` give them.
fn rules(settings: &Settings) -> Rules {
    let limits = &settings.limits;
    // A path segment: not `.` or `..`, not `.git` (whatever trailing dots or blanks), not a
    // Windows device name (with any extension), and no `/`, `\`, `:`, control, invisible or
    // bidirectional character.
    let device = "(?:[Cc][Oo][Nn]|[Pp][Rr][Nn]|[Aa][Uu][Xx]|[Nn][Uu][Ll]|[Cc][Oo][Mm][1-9]|[Ll][Pp][Tt][1-9])";
    let segment = format!(
        r"(?!\.\.?(?:/|$))(?!\.[Gg][Ii][Tt][. ]*(?:/|$))(?!{device} *(?:\.[^/]*)?(?:/|$))[^/\\:{CONTROL}{INVISIBLE}]+"
    );
    let depth = limits.max_path_depth.max(1) - 1;
    let rule = |pattern: Option<String>, min: Option<usize>, max: Option<usize>| Rule {
        pattern,
        min_length: min,
        max_length: max,
        ..Rule::default()
    };
    let range = |minimum: i64, maximum: i64| Rule {
        minimum: Some(minimum),
        maximum: Some(maximum),
        ..Rule::default()
    };
    let one_of = |values: Vec<String>| Rule {
        enum_values: Some(values),
        ..Rule::default()
    };
    let no_nul = no_nul_text();
    let header = ["username", "password", "role"].map(csv_column).join(",");
    Rules {
        file_path: rule(
            Some(format!("^(?:{segment}/){{0,{depth}}}{segment}$")),
            Some(1),
            Some(limits.max_path_bytes),
        ),
        // 1 to 100 characters once trimmed, no control character inside (blanks around it,
        // control ones too, are trimmed away first).
        task_name: rule(
            Some(format!(
                r"^[{BLANK}]*[^{BLANK}{CONTROL}](?:[^{CONTROL}]{{0,98}}[^{BLANK}{CONTROL}])?[{BLANK}]*$"
            )),
            Some(1),
            None,
        ),
        description: rule(no_nul.clone(), None, Some(10_000)),
        // 1 to 4096 bytes, not only blanks, no NUL.
        command: rule(
            Some(format!(r"^[^\x00]*[^{BLANK}\x00][^\x00]*$")),
            Some(1),
            Some(4096),
        ),
        remarks: rule(no_nul, None, Some(crate::routes::runs::MAX_REMARKS_CHARS)),
        username: rule(
            Some("^[a-z0-9][a-z0-9._-]{2,31}$".to_owned()),
            Some(3),
            Some(32),
        ),
        password: rule(None, Some(8), Some(256)),
        search: rule(None, None, Some(100)),
        list_page: range(1, 1_000_000),
        log_page: range(1, i64::MAX),
        per_page: range(1, i64::from(limits.max_per_page)),
        language: one_of(settings.languages.keys().cloned().collect()),
        spec: one_of(settings.specs.keys().cloned().collect()),
        status: one_of(
            coderun_shared::runs::RunStatus::ALL
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        ),
        role: one_of(vec!["student".into(), "teacher".into(), "admin".into()]),
        idempotency_key: rule(
            Some(r"^[\x21-\x7e]+$".to_owned()),
            Some(1),
            Some(crate::idempotency::MAX_KEY_CHARS),
        ),
        // Its size limit is answered 413, not 400: the document gives it as that status.
        file_content: rule(no_nul_text(), None, None),
        dataset_name: rule(
            Some("^[a-z0-9][a-z0-9_-]{0,62}$".to_owned()),
            Some(1),
            Some(63),
        ),
        dataset_version: rule(Some("^v[1-9][0-9]{0,8}$".to_owned()), None, None),
        dataset_ref: rule(
            Some("^[a-z0-9][a-z0-9_-]{0,62}(@v[1-9][0-9]{0,8})?$".to_owned()),
            Some(1),
            None,
        ),
        // 1 to 200 characters once trimmed, no control character.
        dataset_title: rule(
            Some(format!(
                r"^[{BLANK}]*[^{BLANK}{CONTROL}](?:[^{CONTROL}]{{0,198}}[^{BLANK}{CONTROL}])?[{BLANK}]*$"
            )),
            Some(1),
            None,
        ),
        sha256: rule(Some("^[0-9a-fA-F]{64}$".to_owned()), Some(64), Some(64)),
        // Bytes, counted by the server; an http(s) URL (the rest is checked by the server).
        webhook_url: rule(
            Some("^[Hh][Tt][Tt][Pp][Ss]?://".to_owned()),
            Some(1),
            Some(settings.webhooks.max_url_bytes),
        ),
        webhook_event: one_of(
            coderun_shared::webhooks::EventType::ALL
                .map(|e| e.as_str().to_owned())
                .to_vec(),
        ),
        // The header (optionally after a byte order mark), then at least one line of a user.
        users_csv: rule(
            Some(format!(r"^\ufeff?{header}\r?\n[\s\S]*[^\r\n][\s\S]*$")),
            None,
            None,
        ),
    }
}

fn apply_rules_to_parameter(parameter: &mut Parameter, path: &str, rules: &Rules) {
    let Some(RefOr::T(Schema::Object(schema))) = parameter.schema.as_mut() else {
        return;
    };
    let rule = match (parameter.name.as_str(), &parameter.parameter_in) {
        ("path", ParameterIn::Path) => &rules.file_path,
        ("name", ParameterIn::Path) if path.starts_with("/api/v1/datasets/") => &rules.dataset_name,
        ("version", ParameterIn::Path) => &rules.dataset_version,
        ("page", ParameterIn::Query) if path.ends_with("/log") => &rules.log_page,
        ("page", ParameterIn::Query) => &rules.list_page,
        ("per_page", ParameterIn::Query) => &rules.per_page,
        ("q", ParameterIn::Query) => &rules.search,
        ("language", ParameterIn::Query) => &rules.language,
        ("status", ParameterIn::Query) => &rules.status,
        ("role", ParameterIn::Query) => &rules.role,
        ("Idempotency-Key", ParameterIn::Header) => &rules.idempotency_key,
        _ => return,
    };
    rule.apply(schema);
}

/// The properties (of the request schemas) each rule governs.
fn apply_rules_to_schemas(schemas: &mut BTreeMap<String, RefOr<Schema>>, rules: &Rules) {
    let properties: [(&str, &str, &Rule); 23] = [
        ("CreateWebhook", "url", &rules.webhook_url),
        ("CreateTask", "name", &rules.task_name),
        ("CreateTask", "description", &rules.description),
        ("CreateTask", "language", &rules.language),
        ("UpdateTask", "name", &rules.task_name),
        ("UpdateTask", "description", &rules.description),
        ("UpdateTask", "main_file", &rules.file_path),
        ("UpdateTask", "command", &rules.command),
        ("SubmitRun", "command", &rules.command),
        ("SubmitRun", "remarks", &rules.remarks),
        ("SubmitRun", "spec", &rules.spec),
        ("CreateUser", "username", &rules.username),
        ("CreateUser", "password", &rules.password),
        ("MoveRequest", "from", &rules.file_path),
        ("MoveRequest", "to", &rules.file_path),
        ("Upsert", "path", &rules.file_path),
        ("Upsert", "content", &rules.file_content),
        ("CreateDataset", "name", &rules.dataset_name),
        ("CreateDataset", "title", &rules.dataset_title),
        ("CreateDataset", "description", &rules.description),
        ("CreateDataset", "source", &rules.description),
        ("CreateUpload", "path", &rules.file_path),
        ("CreateUpload", "sha256", &rules.sha256),
    ];
    for (schema, property, rule) in properties {
        if let Some(Schema::Object(field)) = property_schema(schemas, schema, property) {
            rule.apply(field);
        }
    }
    if let Some(Schema::Array(delete)) = property_schema(schemas, "BatchRequest", "delete")
        && let ArrayItems::RefOrSchema(item) = &mut delete.items
        && let RefOr::T(Schema::Object(item)) = item.as_mut()
    {
        rules.file_path.apply(item);
    }
    if let Some(Schema::Array(datasets)) = property_schema(schemas, "SubmitRun", "datasets") {
        datasets.max_items = Some(crate::routes::runs::MAX_DATASETS);
        datasets.unique_items = true;
        if let ArrayItems::RefOrSchema(item) = &mut datasets.items
            && let RefOr::T(Schema::Object(item)) = item.as_mut()
        {
            rules.dataset_ref.apply(item);
        }
    }
    if let Some(Schema::Array(events)) = property_schema(schemas, "CreateWebhook", "events") {
        events.min_items = Some(1);
        events.unique_items = true;
        if let ArrayItems::RefOrSchema(item) = &mut events.items
            && let RefOr::T(Schema::Object(item)) = item.as_mut()
        {
            rules.webhook_event.apply(item);
        }
    }
    // A batch changes something: a non-empty `upsert` or a non-empty `delete`.
    if let Some(RefOr::T(batch)) = schemas.remove("BatchRequest") {
        let non_empty = |field: &str| -> RefOr<Schema> {
            ObjectBuilder::new()
                .property(field, ArrayBuilder::new().min_items(Some(1)))
                .required(field)
                .build()
                .into()
        };
        let mut any_of = AnyOf::new();
        any_of.items = vec![non_empty("upsert"), non_empty("delete")];
        let mut all_of = AllOf::new();
        all_of.items = vec![RefOr::T(batch), RefOr::T(Schema::AnyOf(any_of))];
        schemas.insert("BatchRequest".to_owned(), RefOr::T(Schema::AllOf(all_of)));
    }
}

/// A file's content in the body of `PUT …/files/{path}`, inline in its operation.
fn apply_rules_to_file_body(document: &mut Document, rules: &Rules) {
    let Some(operation) = document
        .paths
        .paths
        .get_mut("/api/v1/tasks/{task_id}/files/{path}")
        .and_then(|item| item.put.as_mut())
    else {
        return;
    };
    if let Some(body) = operation.request_body.as_mut()
        && let Some(Some(RefOr::T(Schema::Object(text)))) = body
            .content
            .get_mut("text/plain")
            .map(|c| c.schema.as_mut())
    {
        rules.file_content.apply(text);
    }
}

/// The CSV form of `users:batch`, whose schema is inline in its operation.
fn apply_rules_to_users_csv(document: &mut Document, rules: &Rules) {
    let Some(operation) = document
        .paths
        .paths
        .get_mut("/api/v1/users:batch")
        .and_then(|item| item.post.as_mut())
    else {
        return;
    };
    let Some(body) = operation.request_body.as_mut() else {
        return;
    };
    if let Some(Some(RefOr::T(Schema::Object(csv)))) =
        body.content.get_mut("text/csv").map(|c| c.schema.as_mut())
    {
        rules.users_csv.apply(csv);
    }
}

fn property_schema<'a>(
    schemas: &'a mut BTreeMap<String, RefOr<Schema>>,
    schema: &str,
    property: &str,
) -> Option<&'a mut Schema> {
    let Some(RefOr::T(Schema::Object(object))) = schemas.get_mut(schema) else {
        return None;
    };
    match object.properties.get_mut(property) {
        Some(RefOr::T(schema)) => Some(schema),
        _ => None,
    }
}
