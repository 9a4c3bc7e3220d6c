//! Request handling: authentication, then dispatch of discovery and resource requests to
//! the verbs (get, list, watch, create, update, patch, delete, deletecollection), with
//! representation conversion between what a resource's clients see and the stored form.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::watch as signal;

use crate::discovery;
use crate::error::{ApiError, Qualified, success_status};
use crate::meta;
use crate::object::{self, Preconditions, Subresource};
use crate::openapi;
use crate::openapi_proto;
use crate::patch::{self, PatchType};
use crate::resources::{self, Flavor, Resource};
use crate::routes::{Query, ResourcePath, Route};
use crate::selectors::Selector;
use crate::store::{Change, Committed, EventType, Store};
use crate::watch::{self, WatchRequest, WatchTask};

pub type Body = BoxBody<Bytes, Infallible>;

/// Request bodies above this are refused (kube-apiserver's limit is 3 MiB too).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Namespaces kube-apiserver refuses to delete.
const UNDELETABLE_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// Shared server state.
#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub token: String,
    /// `host:port` clients reach the server at (for `/api`).
    pub server_address: String,
    pub bookmark_interval: Duration,
    /// Watch length when the client gives no `timeoutSeconds`.
    pub watch_timeout: Duration,
    /// Mutations fsync: run them off the async workers.
    pub fsync: bool,
    /// Flips to true at shutdown; ends watch streams.
    pub shutdown: signal::Receiver<bool>,
    /// What the server sent (`GET /metrics`).
    pub traffic: Arc<crate::traffic::Traffic>,
}

impl AppState {
    fn mutate(
        &self,
        key: &str,
        ns: &str,
        name: &str,
        dry_run: bool,
        f: impl FnOnce(Option<&Value>) -> Result<Change, ApiError>,
    ) -> Result<Committed, ApiError> {
        if self.fsync {
            tokio::task::block_in_place(|| self.store.mutate(key, ns, name, dry_run, f))
        } else {
            self.store.mutate(key, ns, name, dry_run, f)
        }
    }

    /// The served resource types (built-ins plus those of stored CRDs).
    pub fn served(&self) -> Vec<Resource> {
        let (crds, _) = self.store.list(resources::CRDS, None);
        let crds: Vec<Value> = crds.iter().map(|c| (**c).clone()).collect();
        resources::all(&crds)
    }
}

/// Handles one request; never fails (errors become Status responses).
pub async fn handle<B>(state: Arc<AppState>, req: Request<B>) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let class = crate::traffic::Class::of(&method, uri.path(), &Query::parse(uri.query()));
    let resp = match dispatch(&state, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    tracing::debug!(%method, %uri, status = resp.status().as_u16(), "request");
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, state.traffic.count_body(class, body))
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code(), &e.status())
}

fn full(bytes: Vec<u8>) -> Body {
    Full::new(Bytes::from(bytes))
        .map_err(|never| match never {})
        .boxed()
}

pub fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    let mut resp = Response::new(full(serde_json::to_vec(v).unwrap_or_default()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Compares the bearer token in constant time.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let given = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .unwrap_or("")
        .trim();
    let want = state.token.as_bytes();
    let given = given.as_bytes();
    let diff = want
        .iter()
        .zip(given.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if given.len() == want.len() && diff == 0 {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

async fn dispatch<B>(state: &Arc<AppState>, req: Request<B>) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    authenticate(state, req.headers())?;
    let query = Query::parse(req.uri().query());
    let route = crate::routes::route(req.uri().path());
    if let Route::Resource(p) = route {
        return resource(state, req, p, query).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match route {
        Route::Root => ok(discovery::root_paths(&state.served())),
        Route::Version => ok(discovery::version()),
        Route::Health => {
            let mut resp = Response::new(full(b"ok".to_vec()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(resp)
        }
        Route::CoreVersions => ok(discovery::core_versions(&state.server_address)),
        Route::Groups => ok(discovery::group_list(&state.served())),
        Route::Group(g) => discovery::group(&state.served(), &g).map_or(Err(ApiError::NoRoute), ok),
        Route::GroupVersion { group, version } => {
            discovery::resource_list(&state.served(), &group, &version)
                .map_or(Err(ApiError::NoRoute), ok)
        }
        Route::OpenApiV3Root => ok(openapi::v3_root(
            &state.served(),
            state.store.resource_version(),
        )),
        Route::OpenApiV3(key) => {
            openapi::v3(&state.served(), &key).map_or(Err(ApiError::NoRoute), ok)
        }
        Route::OpenApiV2 => openapi_v2(state, req.headers()),
        Route::Metrics => {
            let mut resp = Response::new(full(state.traffic.render().to_vec()));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(resp)
        }
        Route::NotFound | Route::Resource(_) => Err(ApiError::NoRoute),
    }
}

/// `/openapi/v2` in the encoding the client accepts. kubectl needs it to create or
/// apply a `kind: List` with validation on (it asks for protobuf only).
fn openapi_v2(state: &AppState, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let accept = headers.get(ACCEPT).and_then(|v| v.to_str().ok());
    let doc = openapi::v2(&state.served());
    match openapi::v2_format(accept) {
        Some(openapi::V2Format::Json) => Ok(json_response(StatusCode::OK, &doc)),
        Some(openapi::V2Format::Protobuf) => {
            let bytes = openapi_proto::encode_document(&doc).map_err(|e| {
                ApiError::Internal(format!("encoding the OpenAPI v2 document: {e}"))
            })?;
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(openapi::V2_PROTOBUF),
            );
            Ok(resp)
        }
        // kube-openapi answers an unacceptable type with a bare 406.
        None => {
            let mut resp = Response::new(full(Vec::new()));
            *resp.status_mut() = StatusCode::NOT_ACCEPTABLE;
            Ok(resp)
        }
    }
}

/// What a resource's clients see of a stored object.
pub fn to_view(res: &Resource, stored: &Value) -> Value {
    match res.flavor {
        Flavor::EventsV1Event => crate::events::core_to_v1(stored),
        Flavor::Custom => {
            let mut v = stored.clone();
            v["apiVersion"] = json!(res.api_version());
            v
        }
        _ => stored.clone(),
    }
}

/// The stored form of an object a client sent.
fn from_view(res: &Resource, obj: Value) -> Value {
    match res.flavor {
        Flavor::EventsV1Event => crate::events::v1_to_core(&obj),
        Flavor::Custom if obj.is_object() => {
            let mut v = obj;
            v["apiVersion"] = json!(res.storage_api_version());
            v
        }
        _ => obj,
    }
}

async fn read_body<B>(body: B) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::TooLarge)
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Decodes a create/update body: JSON or YAML.
fn parse_object(body: &[u8], ct: &str) -> Result<Value, ApiError> {
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "" | "application/json" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(body),
        _ => Err(ApiError::UnsupportedMediaType {
            accepted: "application/json, application/yaml".into(),
        }),
    }
}

fn parse_yaml(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML request body: {e}")))
}

fn ensure_namespace(state: &AppState, res: &Resource, ns: &str) -> Result<(), ApiError> {
    if res.namespaced && state.store.get(resources::NAMESPACES, "", ns).is_none() {
        return Err(ApiError::not_found(&Qualified::new("", "namespaces"), ns));
    }
    Ok(())
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn resource<B>(
    state: &Arc<AppState>,
    req: Request<B>,
    p: ResourcePath,
    query: Query,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let served = state.served();
    let res = resources::find(&served, &p.group, &p.version, &p.plural)
        .cloned()
        .ok_or(ApiError::NoRoute)?;
    if (p.namespace.is_some() && !res.namespaced)
        || (res.namespaced && p.name.is_some() && p.namespace.is_none())
    {
        return Err(ApiError::NoRoute);
    }
    let sub = match p.subresource.as_deref() {
        None => Subresource::Main,
        Some("status") if res.status_subresource => Subresource::Status,
        Some(_) => return Err(ApiError::NoRoute),
    };
    let ns = p.namespace.clone().unwrap_or_default();
    let watch = p.legacy_watch || query.flag("watch");
    let dry_run = query.get("dryRun").is_some_and(|v| !v.is_empty());
    let (parts, body) = req.into_parts();
    match (parts.method.clone(), p.name.clone()) {
        (Method::GET, None) if watch => {
            start_watch(state, res, &p, None, &query, wants_table(&parts.headers))
        }
        (Method::GET, Some(name)) if watch => start_watch(
            state,
            res,
            &p,
            Some(&name),
            &query,
            wants_table(&parts.headers),
        ),
        (Method::GET, None) => list(
            state,
            &res,
            p.namespace.as_deref(),
            &query,
            wants_table(&parts.headers),
        ),
        (Method::GET, Some(name)) => {
            let obj = state
                .store
                .get(&res.storage_key, &ns, &name)
                .ok_or_else(|| ApiError::not_found(&res.qualified(), &name))?;
            let view = to_view(&res, &obj);
            if wants_table(&parts.headers) {
                let rv = meta::resource_version(&view).parse().unwrap_or(0);
                return Ok(json_response(
                    StatusCode::OK,
                    &crate::table::table(&res, &[view], rv),
                ));
            }
            Ok(json_response(StatusCode::OK, &view))
        }
        (Method::POST, None) if sub == Subresource::Main => {
            let body = read_body(body).await?;
            create(
                state,
                &res,
                &ns,
                parse_object(&body, &content_type(&parts.headers))?,
                dry_run,
            )
        }
        (Method::PUT, Some(name)) => {
            let body = read_body(body).await?;
            update(
                state,
                &res,
                &ns,
                &name,
                parse_object(&body, &content_type(&parts.headers))?,
                sub,
                dry_run,
            )
        }
        (Method::PATCH, Some(name)) => {
            let body = read_body(body).await?;
            patch(
                state,
                &res,
                &ns,
                &name,
                &body,
                &content_type(&parts.headers),
                sub,
                &query,
                dry_run,
            )
        }
        (Method::DELETE, Some(name)) if sub == Subresource::Main => {
            let body = read_body(body).await?;
            delete(state, &res, &ns, &name, &body, dry_run)
        }
        (Method::DELETE, None) => {
            delete_collection(state, &res, p.namespace.as_deref(), &query, dry_run)
        }
        _ => Err(ApiError::MethodNotAllowed),
    }
}

fn selector(query: &Query) -> Result<Selector, ApiError> {
    Selector::parse(query.get("labelSelector"), query.get("fieldSelector"))
}

/// Objects of a list (view form), selected.
fn select(res: &Resource, objects: &[Arc<Value>], sel: &Selector) -> Vec<Value> {
    objects
        .iter()
        .map(|o| to_view(res, o))
        .filter(|o| sel.matches(o))
        .collect()
}

/// `limit`/`continue` are accepted and ignored: the whole list comes in one page without
/// a continue token, which paging clients handle as the last page.
fn list(
    state: &AppState,
    res: &Resource,
    ns: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let sel = selector(query)?;
    let (objects, rv) = state.store.list(&res.storage_key, ns);
    let mut items = select(res, &objects, &sel);
    if table {
        return Ok(json_response(
            StatusCode::OK,
            &crate::table::table(res, &items, rv),
        ));
    }
    if !res.is_custom() {
        // Typed lists carry kind/apiVersion only on the list itself.
        for item in &mut items {
            if let Some(m) = item.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": res.list_kind,
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

fn start_watch(
    state: &Arc<AppState>,
    res: Resource,
    p: &ResourcePath,
    name: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<Response<Body>, ApiError> {
    let mut sel = selector(query)?;
    if let Some(name) = name {
        sel = sel.with_name(name);
    }
    let req = WatchRequest::from_query(query, p.namespace.clone(), sel, state.watch_timeout)?;
    let rx = watch::start(WatchTask {
        store: state.store.clone(),
        res,
        req,
        view: to_view,
        bookmark_interval: state.bookmark_interval,
        shutdown: state.shutdown.clone(),
        table,
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn created_or_ok(c: &Committed) -> StatusCode {
    if c.event == Some(EventType::Added) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn create(
    state: &AppState,
    res: &Resource,
    ns: &str,
    body: Value,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    object::check_type(res, &body)?;
    let obj = object::prepare_create(res, ns, from_view(res, body))?;
    ensure_namespace(state, res, ns)?;
    let name = meta::name(&obj).to_string();
    let c = state.mutate(&res.storage_key, ns, &name, dry_run, |cur| match cur {
        Some(_) => Err(ApiError::already_exists(&res.qualified(), &name)),
        None => Ok(Change::Put(obj)),
    })?;
    Ok(json_response(StatusCode::CREATED, &to_view(res, &c.object)))
}

#[allow(clippy::too_many_arguments)]
fn update(
    state: &AppState,
    res: &Resource,
    ns: &str,
    name: &str,
    body: Value,
    sub: Subresource,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    object::check_type(res, &body)?;
    let new = from_view(res, body);
    let may_create = res.allows_create_on_update() && sub == Subresource::Main;
    if may_create {
        ensure_namespace(state, res, ns)?;
    }
    let c = state.mutate(&res.storage_key, ns, name, dry_run, |cur| match cur {
        Some(old) => object::prepare_update(res, ns, name, old, new, sub, true),
        None if may_create => {
            let mut new = new;
            meta::metadata_mut(&mut new).insert("name".into(), json!(name));
            Ok(Change::Put(object::prepare_create(res, ns, new)?))
        }
        None => Err(ApiError::not_found(&res.qualified(), name)),
    })?;
    Ok(json_response(created_or_ok(&c), &to_view(res, &c.object)))
}

#[allow(clippy::too_many_arguments)]
fn patch(
    state: &AppState,
    res: &Resource,
    ns: &str,
    name: &str,
    body: &[u8],
    ct: &str,
    sub: Subresource,
    query: &Query,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let accepted = if res.is_custom() {
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    } else {
        "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml"
    };
    let pt = PatchType::from_content_type(ct)
        .filter(|pt| !(res.is_custom() && *pt == PatchType::Strategic))
        .ok_or_else(|| ApiError::UnsupportedMediaType {
            accepted: accepted.into(),
        })?;
    let body: Value = match pt {
        PatchType::Apply => parse_yaml(body)?,
        _ => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?,
    };
    if matches!(
        pt,
        PatchType::Merge | PatchType::Strategic | PatchType::Apply
    ) && !body.is_object()
    {
        return Err(ApiError::bad_request("the patch must be a JSON object"));
    }
    if pt == PatchType::Apply {
        if query.get("fieldManager").is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "fieldManager is required for apply requests",
            ));
        }
        object::check_type(res, &body)?;
        ensure_namespace(state, res, ns)?;
    }
    let c = state.mutate(&res.storage_key, ns, name, dry_run, |cur| {
        let Some(old) = cur else {
            if pt != PatchType::Apply || sub != Subresource::Main {
                return Err(ApiError::not_found(&res.qualified(), name));
            }
            let mut new = patch::apply(None, &body)?;
            meta::metadata_mut(&mut new).insert("name".into(), json!(name));
            return Ok(Change::Put(object::prepare_create(
                res,
                ns,
                from_view(res, new),
            )?));
        };
        let mut view = to_view(res, old);
        match pt {
            PatchType::Merge => patch::merge_patch(&mut view, &body),
            PatchType::Strategic => patch::strategic_merge(&mut view, &body)?,
            PatchType::Json => patch::json_patch(&mut view, &body, &res.kind, name)?,
            PatchType::Apply => view = patch::apply(Some(&view), &body)?,
        }
        object::check_type(res, &view)?;
        object::prepare_update(res, ns, name, old, from_view(res, view), sub, false)
    })?;
    Ok(json_response(created_or_ok(&c), &to_view(res, &c.object)))
}

fn delete(
    state: &AppState,
    res: &Resource,
    ns: &str,
    name: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    if res.flavor == Flavor::Namespace && UNDELETABLE_NAMESPACES.contains(&name) {
        return Err(ApiError::Forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    let pre = Preconditions::from_delete_options(&opts);
    let c = state.mutate(&res.storage_key, ns, name, dry_run, |cur| match cur {
        Some(cur) => object::prepare_delete(res, cur, &pre),
        None => Err(ApiError::not_found(&res.qualified(), name)),
    })?;
    if c.event != Some(EventType::Deleted) {
        // Finalizers pending (or a dry run): the object lives on.
        return Ok(json_response(StatusCode::OK, &to_view(res, &c.object)));
    }
    cascade(state, res, &c.object);
    if res.returns_deleted_object() {
        Ok(json_response(StatusCode::OK, &to_view(res, &c.object)))
    } else {
        Ok(json_response(
            StatusCode::OK,
            &success_status(&res.qualified(), name, meta::uid(&c.object)),
        ))
    }
}

/// What goes with a deleted object: a CRD's custom resources, a namespace's contents.
fn cascade(state: &AppState, res: &Resource, deleted: &Value) {
    let targets: Vec<(String, Option<String>)> = match res.flavor {
        Flavor::Crd => {
            let spec = &deleted["spec"];
            match (spec["group"].as_str(), spec["names"]["plural"].as_str()) {
                (Some(g), Some(p)) => vec![(format!("{g}/{p}"), None)],
                _ => Vec::new(),
            }
        }
        Flavor::Namespace => {
            let ns = meta::name(deleted).to_string();
            state
                .store
                .keys()
                .into_iter()
                .map(|k| (k, Some(ns.clone())))
                .collect()
        }
        _ => Vec::new(),
    };
    for (key, ns) in targets {
        let (objects, _) = state.store.list(&key, ns.as_deref());
        for o in objects {
            let (o_ns, o_name) = (meta::namespace(&o), meta::name(&o));
            if ns.is_some() && o_ns.is_empty() {
                continue;
            }
            // Already gone is fine: someone else deleted it meanwhile.
            let _ = state.mutate(&key, o_ns, o_name, false, |cur| {
                Ok(if cur.is_some() {
                    Change::Delete(None)
                } else {
                    Change::Unchanged
                })
            });
        }
    }
}

fn delete_collection(
    state: &AppState,
    res: &Resource,
    ns: Option<&str>,
    query: &Query,
    dry_run: bool,
) -> Result<Response<Body>, ApiError> {
    let sel = selector(query)?;
    let (objects, _) = state.store.list(&res.storage_key, ns);
    let mut deleted = Vec::new();
    for o in objects.iter().filter(|o| sel.matches(&to_view(res, o))) {
        let (o_ns, o_name) = (meta::namespace(o), meta::name(o));
        if res.flavor == Flavor::Namespace && UNDELETABLE_NAMESPACES.contains(&o_name) {
            continue;
        }
        let c = state.mutate(&res.storage_key, o_ns, o_name, dry_run, |cur| match cur {
            Some(cur) => object::prepare_delete(res, cur, &Preconditions::default()),
            None => Ok(Change::Unchanged),
        });
        if let Ok(c) = c
            && !c.object.is_null()
        {
            if c.event == Some(EventType::Deleted) {
                cascade(state, res, &c.object);
            }
            deleted.push(to_view(res, &c.object));
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": res.list_kind, "apiVersion": res.api_version(), "metadata": {}, "items": deleted}),
    ))
}
