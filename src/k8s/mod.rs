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
    kube::Client::try_from(config).map_err(Error::Client)
}
