//! API errors and their `kind: Status` JSON bodies, shaped like kube-apiserver's.
//!
//! Clients branch on `code` and `reason` (kube-rs relists on 410, kubectl prints `message`),
//! so each variant carries exactly what the real server sends for that failure.

use http::StatusCode;
use serde_json::{Value, json};

/// The group-qualified resource an error is about (`nodes`, `peers.wgmesh.io`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qualified {
    pub group: String,
    pub resource: String,
}

impl Qualified {
    pub fn new(group: &str, resource: &str) -> Self {
        Qualified {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }
}

impl std::fmt::Display for Qualified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// Every failure a request can end in. `Display` is the Status `message`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} \"{name}\" not found")]
    NotFound { what: Qualified, name: String },
    /// A path or resource type the server does not serve at all.
    #[error("the server could not find the requested resource")]
    NoRoute,
    #[error("{what} \"{name}\" already exists")]
    AlreadyExists { what: Qualified, name: String },
    #[error("Operation cannot be fulfilled on {what} \"{name}\": {detail}")]
    Conflict {
        what: Qualified,
        name: String,
        detail: String,
    },
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
    #[error("{kind} \"{name}\" is invalid: {field}: {detail}")]
    Invalid {
        kind: String,
        name: String,
        field: String,
        detail: String,
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("Unauthorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error(
        "the body of the request was in an unknown format - accepted media types include: {accepted}"
    )]
    UnsupportedMediaType { accepted: String },
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the request entity is too large")]
    TooLarge,
    #[error("Internal error occurred: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn not_found(what: &Qualified, name: &str) -> Self {
        ApiError::NotFound {
            what: what.clone(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(what: &Qualified, name: &str) -> Self {
        ApiError::AlreadyExists {
            what: what.clone(),
            name: name.to_string(),
        }
    }

    /// The optimistic-concurrency failure of an update with a stale resourceVersion.
    pub fn conflict(what: &Qualified, name: &str) -> Self {
        ApiError::Conflict {
            what: what.clone(),
            name: name.to_string(),
            detail: "the object has been modified; please apply your changes to the latest version and try again"
                .to_string(),
        }
    }

    pub fn invalid(kind: &str, name: &str, field: &str, detail: impl Into<String>) -> Self {
        ApiError::Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            field: field.to_string(),
            detail: detail.into(),
        }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }

    pub fn code(&self) -> StatusCode {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Expired { .. } => StatusCode::GONE,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `reason` (metav1.StatusReason).
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoRoute => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Expired { .. } => "Expired",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::TooLarge => "RequestEntityTooLarge",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `kind: Status` body for this error.
    pub fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code().as_u16(),
        });
        let details = match self {
            ApiError::NotFound { what, name }
            | ApiError::AlreadyExists { what, name }
            | ApiError::Conflict { what, name, .. } => {
                let mut d = json!({"name": name, "kind": what.resource});
                if !what.group.is_empty() {
                    d["group"] = json!(what.group);
                }
                Some(d)
            }
            ApiError::Invalid {
                kind,
                name,
                field,
                detail,
            } => Some(json!({
                "name": name,
                "kind": kind,
                // The field is beside the message (kubectl prints "field: message").
                "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
            })),
            _ => None,
        };
        if let Some(d) = details {
            status["details"] = d;
        }
        status
    }
}

/// The `kind: Status` body of a successful delete (what kube-apiserver returns for types
/// that do not return the deleted object).
pub fn success_status(what: &Qualified, name: &str, uid: &str) -> Value {
    let mut details = json!({"name": name, "kind": what.resource, "uid": uid});
    if !what.group.is_empty() {
        details["group"] = json!(what.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_reason_code_and_message() {
        let nodes = Qualified::new("", "nodes");
        let peers = Qualified::new("wgmesh.io", "peers");
        let cases: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                ApiError::not_found(&nodes, "n1"),
                404,
                "NotFound",
                "nodes \"n1\" not found",
            ),
            (
                ApiError::not_found(&peers, "p"),
                404,
                "NotFound",
                "peers.wgmesh.io \"p\" not found",
            ),
            (
                ApiError::already_exists(&nodes, "n1"),
                409,
                "AlreadyExists",
                "nodes \"n1\" already exists",
            ),
            (
                ApiError::conflict(&nodes, "n1"),
                409,
                "Conflict",
                "Operation cannot be fulfilled on nodes \"n1\": the object has been modified; please apply your changes to the latest version and try again",
            ),
            (
                ApiError::Expired {
                    requested: 3,
                    oldest: 9,
                },
                410,
                "Expired",
                "too old resource version: 3 (9)",
            ),
            (ApiError::Unauthorized, 401, "Unauthorized", "Unauthorized"),
            (ApiError::bad_request("nope"), 400, "BadRequest", "nope"),
        ];
        for (err, code, reason, message) in cases {
            let s = err.status();
            assert_eq!(s["kind"], "Status");
            assert_eq!(s["status"], "Failure");
            assert_eq!(s["code"], code, "{err:?}");
            assert_eq!(s["reason"], reason, "{err:?}");
            assert_eq!(s["message"], message, "{err:?}");
        }
        let s = ApiError::invalid("Node", "N", "metadata.name", "must be lowercase").status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "Node \"N\" is invalid: metadata.name: must be lowercase"
        );
        assert_eq!(
            s["details"],
            json!({"name": "N", "kind": "Node", "causes": [
                {"reason": "FieldValueInvalid", "message": "must be lowercase", "field": "metadata.name"}
            ]})
        );
        let s = ApiError::not_found(&peers, "p").status();
        assert_eq!(
            s["details"],
            json!({"name": "p", "kind": "peers", "group": "wgmesh.io"})
        );
    }
}
