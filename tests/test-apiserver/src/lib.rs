//! test-apiserver: a stand-in for kube-apiserver for wgmesh's tests. Real clients
//! (kube-rs, the unmodified kubectl) talk to it over HTTPS with a bearer token.
//!
//! # What it serves
//! - core/v1 `nodes` (+`/status`), `events`, `namespaces` (+`/status`);
//!   `events.k8s.io/v1` `events` (same objects as core/v1, converted);
//!   `apiextensions.k8s.io/v1` `customresourcedefinitions` (+`/status`), and every
//!   group/version/plural that a stored CRD declares (cluster- or namespace-scoped,
//!   with `/status` when declared).
//! - Verbs: get, list, watch, create, update, patch (JSON, merge, strategic merge for
//!   built-ins, apply), delete, deletecollection.
//! - Discovery (legacy), `/version`, `/healthz`, OpenAPI v3 and v2 without schemas,
//!   Table output.
//! - `/metrics`: the bytes it sent, by verb and resource ([`traffic`]), for benchmarks
//!   of the API traffic (kube-apiserver's own metrics are not imitated).
//!
//! # Simplifications (compared to kube-apiserver)
//! - No schemas: objects are not validated against OpenAPI/CRD schemas, unknown fields
//!   are kept (no pruning), no defaulting; `fieldValidation` is accepted and ignored.
//!   Only `metadata` is checked to decode as an ObjectMeta (400, as kube-apiserver
//!   answers a string where labels belong).
//! - Server-side apply is a merge of the applied fields into the live object (strategic
//!   merge rules), without field ownership: no conflicts, no removal of fields a manager
//!   stopped applying, no `managedFields`.
//! - Strategic merge patch knows the patch strategies of a few lists only
//!   (`status.conditions`, `status.addresses` by `type`; `metadata.ownerReferences` by
//!   `uid`; `metadata.finalizers`, `spec.podCIDRs` as sets); other lists are replaced.
//! - Lists ignore `limit`/`continue` (one page) and always serve the current state
//!   (`resourceVersion`/`resourceVersionMatch` are not honoured for lists).
//! - Watch history is kept in memory only (`--watch-history` events per type); after a
//!   restart, watches from older resourceVersions get 410 Expired and clients relist.
//! - Field selectors accept any dotted field path (kube-apiserver allows a per-type set).
//! - One bearer token, no RBAC, no admission beyond namespace existence.
//! - Deleting a namespace or CRD deletes its contents at once (no Terminating phase).
//! - CRD conversion is apiVersion rewriting only (no webhooks); no scale subresource.
//! - JSON only on the wire (bodies may also be YAML); no protobuf or CBOR, except
//!   `/openapi/v2`, which client-go asks for as protobuf only. Discovery is the legacy
//!   (unaggregated) form; clients fall back to it.
//! - The OpenAPI documents (v3, and v2 as JSON or protobuf) have no schemas: each kind
//!   has a PATCH and a PUT declaring `fieldValidation`, which is enough for kubectl to
//!   leave the validation of an object to the server. kubectl validates the items of a
//!   `kind: List` itself against the v2 definitions; with none, it checks only that
//!   each item has an `apiVersion` and a `kind`.
//! - `metadata.generation` is kept for every type (bumped when anything outside metadata
//!   and status changes); `managedFields` are never set.
//! - DELETE honours preconditions and finalizers; `propagationPolicy` and
//!   `gracePeriodSeconds` are accepted and ignored (there are no dependents or pods).
//! - Table output (for `kubectl get`) has the usual columns for Nodes, Events, Namespaces
//!   and CRDs, and a CRD's `additionalPrinterColumns` with simple JSONPaths only.
//! - Events written through events.k8s.io/v1 have no `source`/`count` in core/v1, exactly
//!   as with kube-apiserver (see [`events`]).
//!
//! See README.md beside this crate for the command line, the readiness line and the files
//! in the data directory.

pub mod discovery;
pub mod error;
pub mod events;
pub mod handlers;
pub mod kubeconfig;
pub mod meta;
pub mod object;
pub mod openapi;
pub mod openapi_proto;
pub mod patch;
pub mod persist;
pub mod resources;
pub mod routes;
pub mod selectors;
pub mod server;
pub mod store;
pub mod table;
pub mod tls;
pub mod traffic;
pub mod ttl;
pub mod watch;
