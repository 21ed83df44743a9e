//! Lake and object-store URLs.
//!
//! A lake is a local folder, a `file://` URL or an `s3://bucket/prefix` URL. S3 settings come
//! from the usual `AWS_*` environment variables (`AWS_ENDPOINT_URL` for S3-compatible stores,
//! `AWS_REGION`, `AWS_ACCESS_KEY_ID`, ...). Plain `http://` endpoints are allowed when the
//! endpoint itself says so, and create-only copies use S3's conditional multipart completion
//! unless `AWS_COPY_IF_NOT_EXISTS` says otherwise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{path::Path as ObjectPath, ObjectStore, PutPayload};

/// A lake: a store rooted at the lake's prefix, and its display URL.
#[derive(Debug, Clone)]
pub struct Lake {
    /// The store; keys are relative to the lake root.
    pub store: Arc<dyn ObjectStore>,
    /// Canonical URL (`file:///abs/path` or `s3://bucket/prefix`).
    pub url: String,
    /// The local root, for local lakes.
    pub local_root: Option<PathBuf>,
}

/// Parses `s3://bucket/prefix` into (bucket, prefix).
fn split_s3(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .or_else(|| url.strip_prefix("s3a://"))
        .context("not an s3:// URL")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("{url} names no bucket");
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// An S3 store for `bucket`, configured from the environment.
pub fn s3_store(bucket: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .or_else(|_| std::env::var("AWS_ENDPOINT"))
        .ok();
    if let Some(ep) = &endpoint {
        if ep.starts_with("http://") {
            b = b.with_allow_http(true);
        }
        // S3-compatible endpoints generally want path-style addressing.
        if std::env::var("AWS_VIRTUAL_HOSTED_STYLE_REQUEST").is_err() {
            b = b.with_virtual_hosted_style_request(false);
        }
    }
    if std::env::var("AWS_COPY_IF_NOT_EXISTS").is_err() {
        b = b.with_config(AmazonS3ConfigKey::CopyIfNotExists, "multipart");
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let store = b
        .build()
        .with_context(|| format!("cannot configure S3 access to bucket {bucket}"))?;
    Ok(Arc::new(store))
}

fn local_path(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").unwrap_or(url))
}

impl Lake {
    /// Opens a lake URL, creating a local folder if needed.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("s3://") || url.starts_with("s3a://") {
            let (bucket, prefix) = split_s3(url)?;
            let store = s3_store(&bucket)?;
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                store
            } else {
                Arc::new(PrefixStore::new(store, prefix.as_str()))
            };
            return Ok(Self {
                store,
                url: format!("s3://{bucket}/{prefix}")
                    .trim_end_matches('/')
                    .to_string(),
                local_root: None,
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            bail!("lake URL {url} is not supported: use a folder, file:// or s3://");
        }
        let path = local_path(url);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("lake folder {} cannot be created", path.display()))?;
        let abs = std::fs::canonicalize(&path)
            .with_context(|| format!("lake folder {} cannot be resolved", path.display()))?;
        let store = LocalFileSystem::new_with_prefix(&abs)
            .with_context(|| format!("lake folder {} cannot be opened", abs.display()))?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            url: format!("file://{}", abs.display()),
            local_root: Some(abs),
        })
    }

    /// Writes and removes a probe object, so that an unwritable lake fails before any work.
    pub async fn check_writable(&self) -> anyhow::Result<()> {
        let probe = ObjectPath::from(format!("_fhirhose/probe-{}", uuid::Uuid::new_v4().simple()));
        self.store
            .put(&probe, PutPayload::from_static(b"ok"))
            .await
            .with_context(|| format!("lake {} is not writable", self.url))?;
        let _ = self.store.delete(&probe).await;
        Ok(())
    }
}

/// An input given on the command line, resolved to a store and a prefix when it is a URL.
#[allow(missing_debug_implementations)]
pub enum InputSpec {
    /// A local file or folder.
    Local(PathBuf),
    /// An object-store prefix or object.
    Object {
        /// The store (bucket root).
        store: Arc<dyn ObjectStore>,
        /// Prefix or key within it.
        prefix: ObjectPath,
        /// Display base (`s3://bucket`).
        base: String,
    },
}

/// Resolves an input argument.
pub fn input_spec(arg: &str) -> anyhow::Result<InputSpec> {
    if arg.starts_with("s3://") || arg.starts_with("s3a://") {
        let (bucket, prefix) = split_s3(arg)?;
        return Ok(InputSpec::Object {
            store: s3_store(&bucket)?,
            prefix: ObjectPath::from(prefix),
            base: format!("s3://{bucket}"),
        });
    }
    if arg.contains("://") && !arg.starts_with("file://") {
        bail!("input {arg} is not supported: use a path, file:// or s3://");
    }
    Ok(InputSpec::Local(local_path(arg)))
}

/// True when `p` is inside the local lake (so a folder input does not re-ingest the lake).
pub fn is_inside(p: &Path, root: &Path) -> bool {
    std::fs::canonicalize(p).is_ok_and(|c| c.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls_split() {
        assert_eq!(
            split_s3("s3://b/x/y/").unwrap(),
            ("b".to_string(), "x/y".to_string())
        );
        assert_eq!(
            split_s3("s3://b").unwrap(),
            ("b".to_string(), String::new())
        );
        assert!(split_s3("s3:///x").is_err());
    }

    #[test]
    fn rejects_unknown_schemes() {
        assert!(Lake::open("gs://x").is_err());
        assert!(input_spec("ftp://x").is_err());
    }
}
