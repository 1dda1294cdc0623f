//! Pod names through the Kubernetes API, against recorded API responses served over HTTP (no
//! cluster exists here): the listing and its field selector, RBAC errors, refresh on an unknown
//! pod, and (as root) samples of a process in a pod's cgroup carrying the pod's names.

mod support;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use profiler_daemon::pods::{self, PodDirectory, PodLister, PodsError};
use tokio_util::sync::CancellationToken;

use support::{Daemon, require_bpf, scratch};

const WEB_UID: &str = "0e5c7d2a-1b3f-4c8e-9a6d-2f4b8c1e7a3d";
const APP_CONTAINER: &str = "8d3f2b1a6c4e9f7d0b5a3c8e1f6d4b2a9c7e5f3d1b8a6c4e2f0d9b7a5c3e1f8d";
const BATCH_UID: &str = "c4a2e6b8-0d1f-4a3c-8e5b-7d9f1b3a5c7e";

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes").join(name);
    std::fs::read_to_string(path).unwrap()
}

/// An HTTP server answering `GET /api/v1/pods?fieldSelector=spec.nodeName=node-a` with
/// recorded responses, one per request (the last one repeats), and anything else with 404.
struct FakeApi {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeApi {
    fn start(responses: Vec<(u16, String)>) -> FakeApi {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let responses = Arc::new(Mutex::new(VecDeque::from(responses)));
        let log = requests.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let log = log.clone();
                let responses = responses.clone();
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let uri = req.uri().to_string();
                    log.lock().unwrap().push(uri.clone());
                    let mut queue = responses.lock().unwrap();
                    let (status, body) = if req.uri().path() != "/api/v1/pods"
                        || !uri.contains("fieldSelector=spec.nodeName%3Dnode-a")
                    {
                        (404, r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#.to_owned())
                    } else if queue.len() > 1 {
                        queue.pop_front().unwrap()
                    } else {
                        queue.front().cloned().unwrap()
                    };
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        FakeApi { addr, requests, _runtime: runtime }
    }

    fn lister(&self, node: &str) -> PodLister {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        PodLister::new(kube::Client::try_from(config).unwrap(), node)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// A kubeconfig file that points at this server.
    fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: recorded\n  cluster:\n    server: \
             http://{}\ncontexts:\n- name: recorded\n  context:\n    cluster: recorded\n    \
             user: recorded\ncurrent-context: recorded\nusers:\n- name: recorded\n  user:\n    \
             token: recorded\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
}

#[test]
fn the_node_s_pods_are_listed_and_named() {
    let api = FakeApi::start(vec![(200, fixture("pods-node-a.json"))]);
    let pods = block_on(async { api.lister("node-a").list().await }).unwrap();
    let directory = PodDirectory::new(1, &pods);
    assert_eq!(directory.len(), 2);
    let web = directory.get(WEB_UID).expect("web-0 by its UID");
    assert_eq!((&*web.name, &*web.namespace), ("web-0", "shop"));
    assert_eq!(web.container_name(APP_CONTAINER).map(|n| &**n), Some("app"));
    assert_eq!(web.container_name(&"0".repeat(64)), None);
    // Only this node's pods are asked for.
    assert_eq!(api.requests(), ["/api/v1/pods?&fieldSelector=spec.nodeName%3Dnode-a"]);
}

#[test]
fn a_refusal_names_the_permission_that_is_missing() {
    let api = FakeApi::start(vec![(403, fixture("forbidden.json"))]);
    let err = block_on(async { api.lister("node-a").list().await }).unwrap_err();
    assert!(matches!(err, PodsError::Forbidden { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("cannot list resource \"pods\""), "{message}");
    assert!(message.contains("needs `list` on `pods`"), "{message}");
    assert!(message.contains("serviceaccount.yaml"), "{message}");
}

#[test]
fn an_unreachable_api_is_an_error_that_names_the_node() {
    // A port nothing listens on: bind one, then close it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = block_on(async {
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        PodLister::new(kube::Client::try_from(config).unwrap(), "node-a").list().await
    })
    .unwrap_err();
    assert!(matches!(err, PodsError::Api { .. }), "{err:?}");
    assert!(err.to_string().starts_with("listing the pods on node node-a failed"), "{err}");
}

#[test]
fn a_missing_node_name_says_how_to_set_it() {
    let err = block_on(PodLister::from_environment(None)).unwrap_err();
    assert!(matches!(err, PodsError::NoNodeName), "{err:?}");
    assert!(err.to_string().contains("NODE_NAME"), "{err}");
}

#[test]
fn an_unknown_pod_asks_for_a_new_listing() {
    let api = FakeApi::start(vec![
        (200, fixture("pods-node-a.json")),
        (200, fixture("pods-node-a-later.json")),
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = CancellationToken::new();
    // An hour between periodic listings: only the request can bring the second one.
    let (names, task) = {
        let _guard = runtime.enter();
        pods::spawn(api.lister("node-a"), Duration::from_secs(3600), shutdown.clone())
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}: {:?}", names.health());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("the first listing", &|| names.generation() == 1);
    assert!(names.directory().get(BATCH_UID).is_none());
    names.request_refresh();
    wait_for("a second listing", &|| names.generation() == 2);
    let batch = names.directory().get(BATCH_UID).cloned().expect("the new pod");
    assert_eq!((&*batch.name, &*batch.namespace), ("batch-28417710-q4n8z", "jobs"));
    let health = names.health();
    assert_eq!(
        (health.node.as_str(), health.pods, health.listings, health.errors),
        ("node-a", 3, 2, 0)
    );
    shutdown.cancel();
    runtime.block_on(task).unwrap();
}

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// A busy process started inside a cgroup laid out like the kubelet's (systemd driver) for
/// container `APP_CONTAINER` of pod `WEB_UID`; removed on drop.
struct PodProcess {
    child: Child,
    dirs: Vec<PathBuf>,
}

impl PodProcess {
    fn start() -> PodProcess {
        let root = cgroup2_root().expect("a cgroup2 hierarchy (needed to put a process in a pod)");
        let pod = format!("kubepods-besteffort-pod{}.slice", WEB_UID.replace('-', "_"));
        let chain = [
            "kubepods.slice".to_owned(),
            "kubepods-besteffort.slice".to_owned(),
            pod,
            format!("cri-containerd-{APP_CONTAINER}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut dir = root;
        for part in chain {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", dir.display()));
            }
            dirs.push(dir.clone());
        }
        // The shell moves itself into the container's cgroup, then becomes the workload.
        let procs = dir.join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec python3 -c 'while True: pass'", procs.display()))
            .spawn()
            .unwrap();
        PodProcess { child, dirs }
    }
}

impl Drop for PodProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn samples_from_a_pod_carry_its_name_namespace_and_container() {
    if !require_bpf("samples_from_a_pod_carry_its_name_namespace_and_container") {
        return;
    }
    let dir = scratch("kubernetes_pod");
    let api = FakeApi::start(vec![(200, fixture("pods-node-a.json"))]);
    let kubeconfig = api.kubeconfig(&dir);
    let daemon = Daemon::start_with_env(
        &dir,
        &["--kubernetes", "on", "--node-name", "node-a"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    let process = PodProcess::start();
    let pid = process.child.id().to_string();
    std::thread::sleep(Duration::from_secs(3));

    let by_pod = daemon.ctl_ok(&[
        "query",
        "--format",
        "folded",
        "--since",
        "1m",
        "--pod",
        "web-0",
        "--namespace",
        "shop",
    ]);
    let samples: u64 =
        by_pod.lines().filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok()).sum();
    assert!(samples > 50, "{samples} samples from pod shop/web-0:\n{}", daemon.log());
    let other =
        daemon.ctl_ok(&["query", "--format", "folded", "--since", "1m", "--namespace", "dev"]);
    assert!(other.trim().is_empty(), "namespace dev has no samples: {other}");
    let by_container = daemon.ctl_ok(&[
        "query",
        "--format",
        "folded",
        "--since",
        "1m",
        "-s",
        "container_name=app,pod=web-0",
    ]);
    assert!(!by_container.trim().is_empty(), "container app of web-0");

    let targets = daemon.ctl_ok(&["targets", "--since", "1m"]);
    let line = targets.lines().find(|l| l.split_whitespace().next() == Some(&pid)).unwrap_or("");
    assert!(line.contains("shop/web-0"), "{targets}");
    let status = daemon.ctl_ok(&["status"]);
    assert!(status.contains("kubernetes:  node node-a, 2 pods"), "{status}");
    drop(process);
    assert!(daemon.stop(), "profilerd stops cleanly");
}

#[test]
fn kubernetes_on_without_a_reachable_config_stops_the_daemon() {
    let dir = scratch("kubernetes_on_no_config");
    let out = Command::new(env!("CARGO_BIN_EXE_profilerd"))
        .args(["--kubernetes", "on", "--metrics-listen", "off", "--data-dir"])
        .arg(dir.join("data"))
        .arg("--listen")
        .arg(format!("unix://{}", dir.join("s").display()))
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // A configuration error, found before privileges are checked or anything is loaded.
    assert!(stderr.contains("--kubernetes on: the node name is unknown"), "{stderr}");
    assert!(stderr.contains("NODE_NAME"), "{stderr}");
}
