//! Pod names for samples from containers.
//!
//! A process's cgroup path gives its pod UID and container id. When the daemon runs in a
//! cluster, it lists the pods on its own node through the Kubernetes API (`list pods` with the
//! field selector `spec.nodeName=NODE`, the only permission it needs) and keeps a directory from
//! pod UID to name, namespace and container names. The directory is refreshed periodically, and
//! sooner when a sample comes from a pod it does not know yet (a pod that just started).
//!
//! The collector reads the directory through a `watch` channel and never waits on the API.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use thiserror::Error;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the pods are listed when nothing asks sooner.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// The shortest time between two listings, however often unknown pods are seen.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// The longest wait between retries after the API failed.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Whether pods are named through the Kubernetes API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KubernetesMode {
    /// When running in a cluster (`KUBERNETES_SERVICE_HOST` is set); a failure to set up the
    /// client is a warning.
    #[default]
    Auto,
    /// Always; a failure to set up the client stops the daemon.
    On,
    /// Never.
    Off,
}

/// The lister that `mode` asks for, for node `node` (or `NODE_NAME`). `None` when off, or when
/// `auto` found no cluster or no way to reach it (logged).
pub async fn configure(
    mode: KubernetesMode,
    node: Option<String>,
) -> Result<Option<PodLister>, PodsError> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if mode == KubernetesMode::Off || (mode == KubernetesMode::Auto && !in_cluster) {
        return Ok(None);
    }
    let node = node.or_else(|| std::env::var("NODE_NAME").ok());
    match PodLister::from_environment(node).await {
        Ok(lister) => {
            info!(node = lister.node(), "naming pods through the Kubernetes API");
            Ok(Some(lister))
        }
        Err(e) if mode == KubernetesMode::Auto => {
            warn!("samples from pods carry their UIDs but not their names: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// What the Kubernetes API says about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// (container id without the runtime prefix, container name).
    containers: Vec<(String, Arc<str>)>,
}

impl PodInfo {
    /// The name of the container with id `id` (as found in the cgroup path).
    pub fn container_name(&self, id: &str) -> Option<&Arc<str>> {
        if id.is_empty() {
            return None;
        }
        self.containers.iter().find(|(c, _)| c == id).map(|(_, name)| name)
    }

    fn from_pod(pod: &Pod) -> Option<(String, PodInfo)> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| {
                let all = [&s.container_statuses, &s.init_container_statuses];
                all.into_iter().flatten().flatten()
            })
            .filter_map(|c| {
                // "containerd://<64 hex>", "cri-o://...", "docker://..."
                let id = c.container_id.as_deref()?;
                let id = id.split_once("://").map_or(id, |(_, id)| id);
                Some((id.to_owned(), Arc::from(c.name.as_str())))
            })
            .collect();
        let info = PodInfo {
            name: meta.name.as_deref().unwrap_or_default().into(),
            namespace: meta.namespace.as_deref().unwrap_or_default().into(),
            containers,
        };
        Some((uid, info))
    }
}

/// The pods on this node, by UID, as last listed.
#[derive(Clone, Debug, Default)]
pub struct PodDirectory {
    /// Bumped by every listing, so that a process looks its pod up again only after one.
    generation: u64,
    pods: HashMap<String, Arc<PodInfo>>,
}

impl PodDirectory {
    /// A directory of `pods`, as listing number `generation`.
    pub fn new(generation: u64, pods: &[Pod]) -> PodDirectory {
        let pods = pods.iter().filter_map(PodInfo::from_pod).map(|(uid, p)| (uid, Arc::new(p)));
        PodDirectory { generation, pods: pods.collect() }
    }

    /// The pod with UID `uid`.
    pub fn get(&self, uid: &str) -> Option<&Arc<PodInfo>> {
        self.pods.get(uid)
    }

    /// Which listing this is (0 before the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// Why the pods could not be listed.
#[derive(Debug, Error)]
pub enum PodsError {
    /// Neither a kubeconfig nor the in-cluster service account was usable.
    #[error(
        "no Kubernetes API access: {0} (in a pod, the service account token must be mounted; \
         outside, set KUBECONFIG)"
    )]
    Config(String),
    /// The node name is unknown.
    #[error(
        "the node name is unknown: set --node-name, or NODE_NAME through the downward API \
         (fieldRef spec.nodeName), as deploy/kubernetes/daemonset.yaml does"
    )]
    NoNodeName,
    /// The API refused: usually RBAC.
    #[error(
        "the Kubernetes API refused to list the pods on node {node}: {message} (the service \
         account needs `list` on `pods`; see deploy/kubernetes/serviceaccount.yaml)"
    )]
    Forbidden {
        /// Node.
        node: String,
        /// The API's message.
        message: String,
    },
    /// Any other failure: unreachable, timed out, bad answer.
    #[error("listing the pods on node {node} failed: {source}")]
    Api {
        /// Node.
        node: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// Lists the pods on one node.
#[derive(Clone)]
pub struct PodLister {
    pods: Api<Pod>,
    node: String,
}

impl std::fmt::Debug for PodLister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLister").field("node", &self.node).finish_non_exhaustive()
    }
}

impl PodLister {
    /// A lister for node `node` through `client`.
    pub fn new(client: kube::Client, node: impl Into<String>) -> PodLister {
        PodLister { pods: Api::all(client), node: node.into() }
    }

    /// A lister with the client configuration found in the environment: `KUBECONFIG` or
    /// `~/.kube/config`, else the pod's service account.
    pub async fn from_environment(node: Option<String>) -> Result<PodLister, PodsError> {
        let node = node.filter(|n| !n.is_empty()).ok_or(PodsError::NoNodeName)?;
        let config = kube::Config::infer().await.map_err(|e| PodsError::Config(e.to_string()))?;
        let client =
            kube::Client::try_from(config).map_err(|e| PodsError::Config(e.to_string()))?;
        Ok(PodLister::new(client, node))
    }

    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pods on the node now.
    pub async fn list(&self) -> Result<Vec<Pod>, PodsError> {
        let params = ListParams::default().fields(&format!("spec.nodeName={}", self.node));
        match self.pods.list(&params).await {
            Ok(list) => Ok(list.items),
            Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
                Err(PodsError::Forbidden { node: self.node.clone(), message: status.message })
            }
            Err(source) => Err(PodsError::Api { node: self.node.clone(), source }),
        }
    }
}

/// How the pod directory is doing, for `Status` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodsHealth {
    /// The node.
    pub node: String,
    /// Pods in the directory.
    pub pods: u64,
    /// Successful listings.
    pub listings: u64,
    /// Failed listings.
    pub errors: u64,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
}

/// The collector's side: the directory, and a way to ask for a refresh.
#[derive(Clone, Debug)]
pub struct PodNames {
    directory: watch::Receiver<Arc<PodDirectory>>,
    refresh: Arc<Notify>,
    health: Arc<Mutex<PodsHealth>>,
}

impl PodNames {
    /// Which listing the directory is from (0 before the first).
    pub fn generation(&self) -> u64 {
        self.directory.borrow().generation()
    }

    /// The directory as last listed.
    pub fn directory(&self) -> Arc<PodDirectory> {
        self.directory.borrow().clone()
    }

    /// Asks for a listing soon (at most one every [`MIN_REFRESH_INTERVAL`]); requests made
    /// while one is pending coalesce.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Health of the listings.
    pub fn health(&self) -> PodsHealth {
        self.health.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Starts listing the pods of `lister`'s node on the tokio runtime, until `shutdown`.
pub fn spawn(
    lister: PodLister,
    interval: Duration,
    shutdown: CancellationToken,
) -> (PodNames, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(PodDirectory::default()));
    let refresh = Arc::new(Notify::new());
    let health = Arc::new(Mutex::new(PodsHealth {
        node: lister.node().to_owned(),
        ..PodsHealth::default()
    }));
    let names = PodNames { directory: rx, refresh: refresh.clone(), health: health.clone() };
    let task = tokio::spawn(async move {
        let mut generation = 0;
        let mut backoff = MIN_REFRESH_INTERVAL;
        loop {
            let started = Instant::now();
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = lister.list() => r,
            };
            let wait = match result {
                Ok(pods) => {
                    generation += 1;
                    let directory = PodDirectory::new(generation, &pods);
                    let mut h = health.lock().unwrap_or_else(PoisonError::into_inner);
                    if h.listings == 0 || h.last_error.is_some() {
                        info!(
                            node = lister.node(),
                            pods = directory.len(),
                            "listed the node's pods"
                        );
                    } else {
                        debug!(
                            node = lister.node(),
                            pods = directory.len(),
                            "listed the node's pods"
                        );
                    }
                    h.pods = directory.len() as u64;
                    h.listings += 1;
                    h.last_error = None;
                    drop(h);
                    tx.send_replace(Arc::new(directory));
                    backoff = MIN_REFRESH_INTERVAL;
                    interval
                }
                Err(e) => {
                    let mut h = health.lock().unwrap_or_else(PoisonError::into_inner);
                    let message = e.to_string();
                    if h.last_error.as_deref() != Some(&message) {
                        warn!(retry_in = ?backoff, "{message}");
                    }
                    h.errors += 1;
                    h.last_error = Some(message);
                    drop(h);
                    let wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    wait
                }
            };
            // The next listing: after `wait`, or sooner when asked, but never within
            // MIN_REFRESH_INTERVAL of the last one.
            let earliest = started + MIN_REFRESH_INTERVAL;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = refresh.notified() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(earliest.into()) => {}
                    }
                }
            }
        }
    });
    (names, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_pod_is_found_by_uid_with_its_container_names() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1"},
            "status": {
                "containerStatuses": [
                    {"name": "app", "containerID": "containerd://aaa", "image": "i", "imageID": "",
                     "ready": true, "restartCount": 0},
                ],
                "initContainerStatuses": [
                    {"name": "init", "containerID": "cri-o://bbb", "image": "i", "imageID": "",
                     "ready": false, "restartCount": 0},
                ]
            }
        }));
        let dir = PodDirectory::new(1, &[p]);
        let info = dir.get("u-1").unwrap();
        assert_eq!((&*info.name, &*info.namespace), ("web-0", "shop"));
        assert_eq!(info.container_name("aaa").map(|n| &**n), Some("app"));
        assert_eq!(info.container_name("bbb").map(|n| &**n), Some("init"));
        assert_eq!(info.container_name(""), None);
        assert!(dir.get("u-2").is_none());
    }

    #[test]
    fn a_pod_without_uid_or_status_is_skipped_or_kept_without_containers() {
        let no_uid = pod(serde_json::json!({"metadata": {"name": "x"}}));
        let pending = pod(serde_json::json!({"metadata": {"name": "y", "uid": "u-3"}}));
        let dir = PodDirectory::new(2, &[no_uid, pending]);
        assert_eq!(dir.len(), 1);
        assert_eq!(dir.get("u-3").unwrap().container_name("aaa"), None);
    }
}
