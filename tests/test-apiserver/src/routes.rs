//! Request routing: maps a URL path to what it addresses (discovery documents, OpenAPI,
//! or a resource collection/object/subresource), and parses query strings.

use std::collections::HashMap;

use percent_encoding::percent_decode_str;

/// A parsed query string (last value wins for repeated keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query(HashMap<String, String>);

impl Query {
    pub fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// A boolean parameter: `true` or `1`.
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// A path under `/api/v1` or `/apis/<group>/<version>` that names resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub plural: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path prefix was used.
    pub legacy_watch: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Root,
    Version,
    Health,
    /// `/metrics`: the server's traffic counters (see [`crate::traffic`]).
    Metrics,
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1` or `/apis/<group>/<version>`
    GroupVersion {
        group: String,
        version: String,
    },
    OpenApiV2,
    OpenApiV3Root,
    /// `/openapi/v3/<api/v1 | apis/group/version>`
    OpenApiV3(String),
    Resource(ResourcePath),
    NotFound,
}

pub fn route(path: &str) -> Route {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        [] => Route::Root,
        ["version"] => Route::Version,
        ["healthz" | "livez" | "readyz", ..] => Route::Health,
        ["metrics"] => Route::Metrics,
        ["api"] => Route::CoreVersions,
        ["api", v] => Route::GroupVersion {
            group: String::new(),
            version: v.to_string(),
        },
        ["api", v, rest @ ..] => resource_path("", v, rest),
        ["apis"] => Route::Groups,
        ["apis", g] => Route::Group(g.to_string()),
        ["apis", g, v] => Route::GroupVersion {
            group: g.to_string(),
            version: v.to_string(),
        },
        ["apis", g, v, rest @ ..] => resource_path(g, v, rest),
        ["openapi", "v2"] => Route::OpenApiV2,
        ["openapi", "v3"] => Route::OpenApiV3Root,
        ["openapi", "v3", rest @ ..] => Route::OpenApiV3(rest.join("/")),
        _ => Route::NotFound,
    }
}

fn resource_path(group: &str, version: &str, rest: &[&str]) -> Route {
    let (legacy_watch, rest) = match rest {
        ["watch", tail @ ..] => (true, tail),
        _ => (false, rest),
    };
    let (namespace, rest) = match rest {
        // `namespaces/<ns>/status|finalize` are subresources of a Namespace, not a
        // resource type inside it.
        ["namespaces", _, "status" | "finalize"] => (None, rest),
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n), None),
        [p, n, s] => (p, Some(n), Some(s)),
        _ => return Route::NotFound,
    };
    Route::Resource(ResourcePath {
        group: group.to_string(),
        version: version.to_string(),
        namespace,
        plural: plural.to_string(),
        name: name.map(|n| n.to_string()),
        subresource: subresource.map(|s| s.to_string()),
        legacy_watch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(
        g: &str,
        ns: Option<&str>,
        plural: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Route {
        Route::Resource(ResourcePath {
            group: g.into(),
            version: "v1".into(),
            namespace: ns.map(String::from),
            plural: plural.into(),
            name: name.map(String::from),
            subresource: sub.map(String::from),
            legacy_watch: false,
        })
    }

    #[test]
    fn routing_table() {
        let cases = [
            ("/", Route::Root),
            ("/version", Route::Version),
            ("/healthz", Route::Health),
            ("/readyz/ping", Route::Health),
            ("/metrics", Route::Metrics),
            ("/api", Route::CoreVersions),
            (
                "/api/v1",
                Route::GroupVersion {
                    group: "".into(),
                    version: "v1".into(),
                },
            ),
            ("/apis", Route::Groups),
            ("/apis/wgmesh.io", Route::Group("wgmesh.io".into())),
            (
                "/apis/wgmesh.io/v1",
                Route::GroupVersion {
                    group: "wgmesh.io".into(),
                    version: "v1".into(),
                },
            ),
            ("/openapi/v2", Route::OpenApiV2),
            ("/openapi/v3", Route::OpenApiV3Root),
            ("/openapi/v3/api/v1", Route::OpenApiV3("api/v1".into())),
            ("/api/v1/nodes", res("", None, "nodes", None, None)),
            ("/api/v1/nodes/n1", res("", None, "nodes", Some("n1"), None)),
            (
                "/api/v1/nodes/n1/status",
                res("", None, "nodes", Some("n1"), Some("status")),
            ),
            ("/api/v1/events", res("", None, "events", None, None)),
            (
                "/api/v1/namespaces",
                res("", None, "namespaces", None, None),
            ),
            (
                "/api/v1/namespaces/default",
                res("", None, "namespaces", Some("default"), None),
            ),
            (
                "/api/v1/namespaces/default/status",
                res("", None, "namespaces", Some("default"), Some("status")),
            ),
            (
                "/api/v1/namespaces/default/events",
                res("", Some("default"), "events", None, None),
            ),
            (
                "/api/v1/namespaces/default/events/e%2E1",
                res("", Some("default"), "events", Some("e.1"), None),
            ),
            (
                "/apis/wgmesh.io/v1/peers/p1/status",
                res("wgmesh.io", None, "peers", Some("p1"), Some("status")),
            ),
            ("/api/v1/nodes/a/b/c", Route::NotFound),
            ("/nope", Route::NotFound),
        ];
        for (path, want) in cases {
            assert_eq!(route(path), want, "{path}");
        }
        let Route::Resource(r) = route("/api/v1/watch/namespaces/default/events") else {
            panic!("watch path")
        };
        assert!(r.legacy_watch);
        assert_eq!(r.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse(Some(
            "watch=1&labelSelector=a%3Db%2Cc&allowWatchBookmarks=true&x=false",
        ));
        assert!(q.flag("watch"));
        assert!(q.flag("allowWatchBookmarks"));
        assert!(!q.flag("x"));
        assert!(!q.flag("missing"));
        assert_eq!(q.get("labelSelector"), Some("a=b,c"));
        assert_eq!(Query::parse(None).get("a"), None);
    }
}
