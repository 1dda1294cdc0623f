//! Debug files from debuginfod servers (`GET /buildid/ID/debuginfo`), downloaded in the
//! background into a bounded cache that is laid out as a build-id directory.
//!
//! The symbolizer asks without waiting: a build-id not yet in the cache is queued (a bounded
//! queue; what does not fit is counted), and its frames are named from the binary's own
//! symbols until the file arrives. One download runs at a time. A
//! build-id that no server has, or that failed, is not asked for again for a while.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{StatusCode, Uri, body::Bytes};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::{io::AsyncWriteExt as _, sync::mpsc};
use tracing::{debug, info, warn};

use super::{DebugInfoError, DebugInfoStats, Lookup, build_id_path, is_build_id};

/// Build-ids waiting for a download.
const QUEUE: usize = 256;
/// How long a build-id that could not be fetched is left alone.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Build-ids the fetcher remembers at most (queued, or failed within [`RETRY_AFTER`]).
const MAX_STATES: usize = 4096;
/// How long a server may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one download may take, from the request to the last byte.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);

/// Where a build-id stands with the fetcher.
#[derive(Clone, Copy, Debug)]
enum State {
    Queued,
    Failed(Instant),
}

/// The handle the symbolizer asks through.
#[derive(Debug)]
pub struct Fetcher {
    queue: mpsc::Sender<String>,
    states: Arc<Mutex<HashMap<String, State>>>,
    stats: Arc<DebugInfoStats>,
}

impl Fetcher {
    /// Starts the download task on the current tokio runtime. `servers` are `http://` or
    /// `https://` URLs; downloads go to `cache`, which holds at most `max_bytes`.
    pub fn spawn(
        servers: Vec<String>,
        cache: PathBuf,
        max_bytes: u64,
        stats: Arc<DebugInfoStats>,
    ) -> Result<Fetcher, DebugInfoError> {
        let mut uris = Vec::with_capacity(servers.len());
        for server in servers {
            let uri: Uri = server
                .trim_end_matches('/')
                .parse()
                .map_err(|_| DebugInfoError::Url(server.clone()))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(DebugInfoError::Url(server));
            }
            uris.push((server.trim_end_matches('/').to_owned(), uri));
        }
        std::fs::create_dir_all(&cache)
            .map_err(|source| DebugInfoError::Cache { path: cache.clone(), source })?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| DebugInfoError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let (queue, requests) = mpsc::channel(QUEUE);
        let states = Arc::new(Mutex::new(HashMap::new()));
        let task = Downloads {
            client,
            servers: uris,
            cache: Cache { dir: cache, max_bytes },
            states: states.clone(),
            stats: stats.clone(),
        };
        tokio::spawn(task.run(requests));
        Ok(Fetcher { queue, states, stats })
    }

    /// Queues `build_id` unless it is queued already or failed a short while ago.
    pub(super) fn request(&self, build_id: &str) -> Lookup {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        match states.get(build_id) {
            Some(State::Queued) => return Lookup::Pending,
            Some(State::Failed(at)) if at.elapsed() < RETRY_AFTER => return Lookup::Missing,
            _ => {}
        }
        if !make_room(&mut states, Instant::now()) {
            self.stats.dropped.fetch_add(1, Relaxed);
            return Lookup::Missing;
        }
        match self.queue.try_send(build_id.to_owned()) {
            Ok(()) => {
                states.insert(build_id.to_owned(), State::Queued);
                Lookup::Pending
            }
            Err(_) => {
                self.stats.dropped.fetch_add(1, Relaxed);
                Lookup::Missing
            }
        }
    }
}

/// The cache directory: `.build-id/NN/REST.debug` files, the oldest removed to stay within
/// `max_bytes`.
#[derive(Debug)]
struct Cache {
    dir: PathBuf,
    max_bytes: u64,
}

impl Cache {
    /// Removes the oldest files until `incoming` more bytes fit; returns the bytes held then.
    fn make_room(&self, incoming: u64) -> u64 {
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = Vec::new();
        let subdirs = std::fs::read_dir(self.dir.join(".build-id")).into_iter().flatten();
        for sub in subdirs.flatten() {
            for entry in std::fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                // Downloads under way end in `.partial`.
                if entry.path().extension().is_none_or(|e| e != "debug") {
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    files.push((modified, meta.len(), entry.path()));
                }
            }
        }
        files.sort();
        let mut held: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, path) in files {
            if held.saturating_add(incoming) <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                held -= len;
            }
        }
        held
    }
}

/// Why one server did not give a file.
enum Failure {
    /// It has no file for that build-id.
    NotFound,
    /// It could not be asked, or its answer was not the file.
    Error(String),
}

/// The download task.
struct Downloads {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    servers: Vec<(String, Uri)>,
    cache: Cache,
    states: Arc<Mutex<HashMap<String, State>>>,
    stats: Arc<DebugInfoStats>,
}

impl Downloads {
    async fn run(self, mut requests: mpsc::Receiver<String>) {
        while let Some(build_id) = requests.recv().await {
            let fetched = self.fetch(&build_id).await;
            let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            if fetched {
                states.remove(&build_id);
            } else {
                states.insert(build_id, State::Failed(Instant::now()));
            }
        }
    }

    /// Asks each server in turn; true once one gave the file.
    async fn fetch(&self, build_id: &str) -> bool {
        if !is_build_id(build_id) {
            return false;
        }
        let mut not_found = true;
        for (url, uri) in &self.servers {
            match self.download(uri, build_id).await {
                Ok(bytes) => {
                    self.stats.downloads.fetch_add(1, Relaxed);
                    self.stats.download_bytes.fetch_add(bytes, Relaxed);
                    info!(server = %url, build_id, bytes, "debug file downloaded");
                    return true;
                }
                Err(Failure::NotFound) => {
                    debug!(server = %url, build_id, "no debug file on this server");
                }
                Err(Failure::Error(e)) => {
                    not_found = false;
                    self.stats.failures.fetch_add(1, Relaxed);
                    warn!(server = %url, build_id, error = %e, "debuginfod request failed");
                    self.stats.set_last_error(format!("{url}: {e}"));
                }
            }
        }
        if not_found {
            self.stats.not_found.fetch_add(1, Relaxed);
        }
        false
    }

    /// Downloads the debug file of `build_id` from the server at `base` into the cache.
    async fn download(&self, base: &Uri, build_id: &str) -> Result<u64, Failure> {
        let target =
            format!("{}/buildid/{build_id}/debuginfo", base.to_string().trim_end_matches('/'));
        let uri: Uri = target.parse().map_err(|_| Failure::Error(format!("bad URL {target}")))?;
        let work = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| Failure::Error(format!("unreachable: {}", causes(&e))))?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Err(Failure::NotFound),
                status => return Err(Failure::Error(format!("answered {status}"))),
            }
            let announced = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(0);
            if announced > self.cache.max_bytes {
                return Err(Failure::Error(format!(
                    "the file ({announced} bytes) is larger than the cache ({} bytes)",
                    self.cache.max_bytes
                )));
            }
            let dest = build_id_path(&self.cache.dir, build_id);
            let partial = dest.with_extension("partial");
            let parent = dest.parent().unwrap_or(&self.cache.dir).to_owned();
            tokio::fs::create_dir_all(&parent).await.map_err(|e| io_failure(&parent, &e))?;
            let mut file =
                tokio::fs::File::create(&partial).await.map_err(|e| io_failure(&partial, &e))?;
            let mut body = response.into_body();
            let mut written = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::Error(format!("reading the file: {e}")))?;
                let Ok(data) = frame.into_data() else { continue };
                written += data.len() as u64;
                if written > self.cache.max_bytes {
                    drop(file);
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(Failure::Error("the file is larger than the cache".into()));
                }
                file.write_all(&data).await.map_err(|e| io_failure(&partial, &e))?;
            }
            file.flush().await.map_err(|e| io_failure(&partial, &e))?;
            drop(file);
            Ok::<_, Failure>((partial, dest, written))
        };
        let (partial, dest, written) = match tokio::time::timeout(DOWNLOAD_TIMEOUT, work).await {
            Ok(result) => result?,
            Err(_) => return Err(Failure::Error("the download did not finish in time".into())),
        };
        // Checking the file and making room read the disk: off the async workers.
        let id = build_id.to_owned();
        let cache = Cache { dir: self.cache.dir.clone(), max_bytes: self.cache.max_bytes };
        let stats = self.stats.clone();
        tokio::task::spawn_blocking(move || {
            let matches = blazesym::helper::read_elf_build_id(&partial)
                .ok()
                .flatten()
                .is_some_and(|got| super::hex(&got) == id);
            if !matches {
                let _ = std::fs::remove_file(&partial);
                return Err(Failure::Error(
                    "the answer is not an ELF file with that build-id".into(),
                ));
            }
            let held = cache.make_room(written);
            std::fs::rename(&partial, &dest).map_err(|e| io_failure(&dest, &e))?;
            stats.cache_bytes.store(held + written, Relaxed);
            Ok(written)
        })
        .await
        .map_err(|e| Failure::Error(e.to_string()))?
    }
}

/// The causes under `e` (hyper's own message says only that the request failed), outermost
/// first: for example `tcp connect error: Connection refused (os error 111)`.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        parts.push(cause.to_string());
        next = cause.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

fn io_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure::Error(format!("writing {}: {e}", path.display()))
}

/// Whether `states` has room for one more build-id at `now`: when it is full, failures whose
/// wait is over are forgotten first (they would be tried again anyway).
fn make_room(states: &mut HashMap<String, State>, now: Instant) -> bool {
    if states.len() < MAX_STATES {
        return true;
    }
    states.retain(|_, state| match state {
        State::Queued => true,
        State::Failed(at) => now.saturating_duration_since(*at) < RETRY_AFTER,
    });
    states.len() < MAX_STATES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_build_ids_are_bounded_and_old_failures_make_room() {
        let start = Instant::now();
        let mut states = HashMap::new();
        for i in 0..MAX_STATES {
            assert!(make_room(&mut states, start));
            let state = if i % 2 == 0 { State::Queued } else { State::Failed(start) };
            states.insert(format!("{i:040x}"), state);
        }
        // Full of recent failures and queued ids: no room.
        assert!(!make_room(&mut states, start + Duration::from_secs(1)));
        assert_eq!(states.len(), MAX_STATES);
        // Once the failures' wait is over they go; the queued ones stay.
        assert!(make_room(&mut states, start + RETRY_AFTER));
        assert_eq!(states.len(), MAX_STATES / 2);
        assert!(states.values().all(|s| matches!(s, State::Queued)));
    }
}
