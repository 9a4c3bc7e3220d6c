//! Adapter to the Kubernetes API: the Node watch, the agent's own Node (annotations,
//! condition) and Events. Translation of API objects into wgmesh's plain types is in
//! [`translate`] (pure).

pub mod events;
pub mod peers;
pub mod publish;
pub mod relevant;
pub mod translate;
pub mod watch;

use std::path::Path;
use std::time::Duration;

/// A Kubernetes API call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (no --kubeconfig, no KUBECONFIG, not in a cluster): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("Kubernetes API {op} {target}: {source}")]
    Api {
        op: &'static str,
        target: String,
        #[source]
        source: kube::Error,
    },
}

/// A client from an explicit kubeconfig, else `KUBECONFIG`, else the in-cluster config.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    connect(config)
}

/// How long an idle API connection waits before probing the server (TCP keepalive),
/// then how often, and how many unanswered probes end it. A NAT gateway that restarts
/// or is re-addressed forgets the connection of a long-lived watch without a word:
/// without probes the agent would wait minutes for events that never come.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// kube-rs's client stack (TLS, timeouts, the server's base URI, credentials) on
/// connections with TCP keepalive.
fn connect(config: kube::Config) -> Result<kube::Client, Error> {
    use kube::client::ConfigExt;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    let https = config
        .rustls_https_connector_with_connector(http)
        .map_err(Error::Client)?;
    let mut timeouts = hyper_timeout::TimeoutConnector::new(https);
    timeouts.set_connect_timeout(config.connect_timeout);
    timeouts.set_read_timeout(config.read_timeout);
    timeouts.set_write_timeout(config.write_timeout);
    let client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(timeouts);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::Client)?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(kube::Client::new(service, config.default_namespace))
}
