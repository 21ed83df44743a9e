//! Storage faults: a full disk under a local lake, and object-store errors on writes. In each
//! case the write fails cleanly (a failed file in the summary, a one-line error), the file is
//! not checkpointed `done`, and a later retry lands it with every row exactly once.

mod common;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use async_trait::async_trait;
use common::{local_store, table};
use fhirhose::lake::Lake;
use fhirhose::pipeline::{run_ingest, IngestConfig, ViewSet};
use fhirhose_ingest::framing::FramerConfig;
use fhirhose_ingest::state::{FileStatus, StateStore};
use futures::stream::BoxStream;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// Writes `n` Patient lines.
fn patients_file(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..n {
        writeln!(
            f,
            r#"{{"resourceType":"Patient","id":"p{i}","meta":{{"versionId":"1"}},"gender":"other","text":{{"div":"{}"}}}}"#,
            "x".repeat(40)
        )
        .unwrap();
    }
}

/// `(type, id)` of every `resources` row.
async fn resource_ids(store: &Arc<dyn ObjectStore>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in table(store, "resources").await {
        let t = b
            .column_by_name("resource_type")
            .unwrap()
            .as_string::<i32>();
        let id = b.column_by_name("id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push((t.value(i).to_string(), id.value(i).to_string()));
        }
    }
    out
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

/// A tmpfs mount that is unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (CI and the dev machines run as root)"
        );
        Self(at.to_owned())
    }

    fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_file_cleanly_and_a_retry_lands_it_once() {
    const N: usize = 40_000; // about 4.6 MB of NDJSON: more than the 2 MiB disk
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    patients_file(&input.join("Patient.ndjson"), N);
    let lake = dir.path().join("lake");
    let disk = Tmpfs::mount(&lake, "2m");
    let state = dir.path().join("state/state.db");
    let summary = dir.path().join("summary.json");
    let args = [
        "ingest",
        input.to_str().unwrap(),
        "--lake",
        lake.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--summary-json",
        summary.to_str().unwrap(),
    ];
    let out = common::fhirhose(dir.path(), &args);
    assert_ne!(out.status.code(), Some(0), "a full disk is a failed run");
    let s = common::summary(&summary);
    assert_eq!(s["files_failed"], 1);
    let err = s["file_reports"][0]["error"].as_str().unwrap().to_owned();
    assert!(
        err.to_lowercase().contains("space") || err.contains("os error 28"),
        "the error says the disk is full: {err}"
    );
    assert!(!err.contains("\"id\""), "no content in the error");
    // Not checkpointed.
    let st = StateStore::open(&state).unwrap();
    let recs = st
        .files(&Lake::open(lake.to_str().unwrap()).unwrap().url)
        .unwrap();
    assert_eq!(recs.len(), 1);
    assert_ne!(recs[0].status, FileStatus::Done);
    drop(st);

    // Space comes back: the retry lands every row once.
    disk.resize("64m");
    let out = common::fhirhose(dir.path(), &args);
    assert_eq!(out.status.code(), Some(0));
    let s = common::summary(&summary);
    assert_eq!(s["files_done"], 1);
    assert_eq!(s["resources"], N as u64);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(resource_ids(&local_store(&lake)));
    assert_eq!(ids.len(), N);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        N,
        "no duplicated rows"
    );
    let raw = find_file(&lake.join("raw"), "Patient.ndjson").expect("raw object");
    assert_eq!(
        std::fs::read(raw).unwrap(),
        std::fs::read(input.join("Patient.ndjson")).unwrap()
    );
    drop(disk);
}

/// An object store that fails writes while `failing` is set: after `budget` successful
/// writes, every put, multipart part and copy returns a generic error.
struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    failing: AtomicBool,
    budget: AtomicU64,
    injected: AtomicU64,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultyStore")
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultyStore")
    }
}

impl FaultyStore {
    fn check(&self, op: &str) -> object_store::Result<()> {
        if !self.failing.load(Ordering::SeqCst) {
            return Ok(());
        }
        let left = self.budget.load(Ordering::SeqCst);
        if left > 0 {
            self.budget.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        Err(object_store::Error::Generic {
            store: "faulty",
            source: format!("injected {op} failure (503 SlowDown)").into(),
        })
    }
}

struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    store: Arc<FaultyStore>,
}

impl fmt::Debug for FaultyUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FaultyUpload")
    }
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if let Err(e) = self.store.check("upload part") {
            return Box::pin(async move { Err(e) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.store.check("complete")?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

/// The `Arc` the pipeline holds, so uploads can reach the switch.
#[derive(Debug)]
struct Faulty(Arc<FaultyStore>);

impl fmt::Display for Faulty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Faulty")
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.check("put")?;
        self.0.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.0.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            store: Arc::clone(&self.0),
        }))
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.inner.get_opts(location, options).await
    }

    async fn delete(&self, location: &ObjectPath) -> object_store::Result<()> {
        self.0.inner.delete(location).await
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.0.inner.list_with_delimiter(prefix).await
    }

    async fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> object_store::Result<()> {
        self.0.check("copy")?;
        self.0.inner.copy(from, to).await
    }

    async fn copy_if_not_exists(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
    ) -> object_store::Result<()> {
        self.0.check("copy")?;
        self.0.inner.copy_if_not_exists(from, to).await
    }
}

fn config(store: Arc<dyn ObjectStore>, state: Arc<StateStore>) -> Arc<IngestConfig> {
    Arc::new(IngestConfig {
        lake: Lake {
            store,
            url: "faulty://lake".into(),
            local_root: None,
        },
        source: "local".into(),
        run_id: fhirhose::cli::new_run_id(),
        kafka: None,
        state,
        framer: FramerConfig {
            max_line_bytes: 1 << 20,
            block_bytes: 64 * 1024,
        },
        parquet: Default::default(),
        file_concurrency: 2,
        workers: 2,
        memory: Arc::new(fhirhose::pipeline::budget::MemoryBudget::for_workers(
            2,
            64 * 1024,
        )),
        views: Arc::new(ViewSet::canonical().unwrap()),
        delivery_timeout: fhirhose::pipeline::default_delivery_timeout(),
        force: false,
        raw_inline_bytes: 256 * 1024,
        lineage: Default::default(),
        views_only: false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_store_write_errors_fail_the_file_cleanly_and_a_retry_lands_it_once() {
    const N: usize = 5_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    patients_file(&input.join("Patient.ndjson"), N);
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let faulty = Arc::new(FaultyStore {
        inner: local_store(&dir.path().join("lake")),
        failing: AtomicBool::new(true),
        budget: AtomicU64::new(0),
        injected: AtomicU64::new(0),
    });
    let store: Arc<dyn ObjectStore> = Arc::new(Faulty(Arc::clone(&faulty)));
    let state = Arc::new(StateStore::in_memory().unwrap());
    let files = fhirhose_ingest::source::list_local(&input).unwrap();

    // Fail at several points of the file's writes: the first write (raw staging part), the
    // next ones (raw move into place, Parquet uploads).
    for budget in [0u64, 1, 2] {
        faulty.failing.store(true, Ordering::SeqCst);
        faulty.budget.store(budget, Ordering::SeqCst);
        let s = run_ingest(
            config(Arc::clone(&store), Arc::clone(&state)),
            files.clone(),
        )
        .await;
        assert_eq!(s.files_failed, 1, "budget {budget}: the file failed");
        let err = s.file_reports[0].error.clone().unwrap();
        assert!(
            err.contains("injected"),
            "the store's error is reported: {err}"
        );
        assert!(faulty.injected.load(Ordering::SeqCst) > 0);
        let rec = state
            .file("faulty://lake", &files[0].fingerprint)
            .unwrap()
            .unwrap();
        assert_eq!(rec.status, FileStatus::Failed, "not checkpointed done");
    }

    // The store recovers: the retry lands every row exactly once.
    faulty.failing.store(false, Ordering::SeqCst);
    let s = run_ingest(
        config(Arc::clone(&store), Arc::clone(&state)),
        files.clone(),
    )
    .await;
    assert_eq!(s.files_done, 1, "{:?}", s.file_reports[0].error);
    assert_eq!(s.resources, N as u64);
    let ids = resource_ids(&store).await;
    assert_eq!(ids.len(), N);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        N,
        "no duplicated rows"
    );
    let rec = state
        .file("faulty://lake", &files[0].fingerprint)
        .unwrap()
        .unwrap();
    assert_eq!(rec.status, FileStatus::Done);
    // And a run after that skips it.
    let s = run_ingest(config(Arc::clone(&store), Arc::clone(&state)), files).await;
    assert_eq!(s.files_skipped, 1);
}

/// A run budget smaller than one block (every block then takes all of it) still lands
/// several files at once, each exactly once: files wait for each other's blocks, they do
/// not deadlock, and the Parquet budget (1 byte) only makes row groups small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_budget_smaller_than_one_block_lands_concurrent_files_exactly_once() {
    use std::io::Write;
    const FILES: usize = 4;
    const N: usize = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for f in 0..FILES {
        let path = input.join(format!("Patient.{f:02}.ndjson"));
        let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        for i in 0..N {
            writeln!(
                w,
                r#"{{"resourceType":"Patient","id":"f{f}-p{i}","gender":"other"}}"#
            )
            .unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let store = local_store(&dir.path().join("lake"));
    let state = Arc::new(StateStore::in_memory().unwrap());
    let files = fhirhose_ingest::source::list_local(&input).unwrap();
    let mut cfg = Arc::try_unwrap(config(Arc::clone(&store), state)).unwrap();
    cfg.memory = Arc::new(fhirhose::pipeline::budget::MemoryBudget::new(1, 1));
    assert_eq!(cfg.memory.block_bytes(), 1024, "one permit");
    let s = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        run_ingest(Arc::new(cfg), files),
    )
    .await
    .expect("no deadlock");
    assert_eq!(s.files_done, FILES as u64, "{:?}", s.file_reports);
    let ids = resource_ids(&store).await;
    assert_eq!(ids.len(), FILES * N);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), FILES * N);
}
