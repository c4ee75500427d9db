//! Snapshots of the collection over Qdrant's REST API (gRPC can create, list
//! and delete them, but neither download nor upload one).

use std::path::Path;

use qdrant_client::qdrant::{CountPointsBuilder, DeleteSnapshotRequestBuilder};
use secrecy::ExposeSecret;

use super::{QdrantMemory, qerr};
use crate::memory::MemoryError;

impl QdrantMemory {
    /// Takes a snapshot of the collection, downloads it into `path` (written
    /// under a `.partial` name, renamed when complete and its SHA-256 matches
    /// Qdrant's), then deletes every snapshot of the collection from Qdrant
    /// (this one and any left by earlier runs). Returns the bytes written.
    ///
    /// # Errors
    /// When Qdrant fails, the REST URL is unknown, or the file cannot be written.
    pub async fn snapshot_to(&self, path: &Path) -> Result<u64, MemoryError> {
        let rest = self.rest_url()?;
        let made = self
            .client
            .create_snapshot(self.collection.as_str())
            .await
            .map_err(qerr)?
            .snapshot_description
            .ok_or_else(|| qerr("Qdrant made no snapshot"))?;
        let url = format!(
            "{rest}/collections/{}/snapshots/{}",
            self.collection, made.name
        );
        let downloaded = self.download(&url, path, made.checksum.as_deref()).await;
        let removed = self.delete_snapshots().await;
        let bytes = downloaded?;
        removed?;
        Ok(bytes)
    }

    async fn download(
        &self,
        url: &str,
        path: &Path,
        checksum: Option<&str>,
    ) -> Result<u64, MemoryError> {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt as _;
        let mut response = self
            .authorized(self.http.get(url))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| qerr(format!("snapshot download: {e}")))?;
        let mut partial_name = path.as_os_str().to_owned();
        partial_name.push(".partial");
        let partial = std::path::PathBuf::from(partial_name);
        let io = |e: std::io::Error| qerr(format!("{}: {e}", partial.display()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut digest = sha2::Sha256::new();
        let mut bytes = 0u64;
        let written: Result<(), MemoryError> = async {
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| qerr(format!("snapshot download: {e}")))?
            {
                digest.update(&chunk);
                bytes += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            let got = format!("{:x}", digest.finalize());
            match checksum {
                Some(want) if !want.eq_ignore_ascii_case(&got) => Err(qerr(format!(
                    "snapshot download: SHA-256 {got} is not Qdrant's {want}"
                ))),
                _ => Ok(()),
            }
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, path).await.map_err(io)?;
        Ok(bytes)
    }

    /// Deletes every snapshot of the collection kept by Qdrant.
    async fn delete_snapshots(&self) -> Result<(), MemoryError> {
        let listed = self
            .client
            .list_snapshots(self.collection.as_str())
            .await
            .map_err(qerr)?;
        for snapshot in listed.snapshot_descriptions {
            self.client
                .delete_snapshot(DeleteSnapshotRequestBuilder::new(
                    &self.collection,
                    snapshot.name,
                ))
                .await
                .map_err(qerr)?;
        }
        Ok(())
    }

    /// Points in the collection, every owner's.
    ///
    /// # Errors
    /// When Qdrant fails.
    pub async fn points(&self) -> Result<u64, MemoryError> {
        Ok(self
            .client
            .count(CountPointsBuilder::new(&self.collection).exact(true))
            .await
            .map_err(qerr)?
            .result
            .map_or(0, |r| r.count))
    }

    /// Snapshots of the collection Qdrant keeps now (names).
    ///
    /// # Errors
    /// When Qdrant fails.
    pub async fn snapshots(&self) -> Result<Vec<String>, MemoryError> {
        let listed = self
            .client
            .list_snapshots(self.collection.as_str())
            .await
            .map_err(qerr)?;
        Ok(listed
            .snapshot_descriptions
            .into_iter()
            .map(|d| d.name)
            .collect())
    }

    /// Replaces the collection with the snapshot in `path` (uploaded to
    /// Qdrant's `POST /collections/{name}/snapshots/upload?priority=snapshot`).
    ///
    /// # Errors
    /// When the file cannot be read, or Qdrant refuses it.
    pub async fn recover_from(&self, path: &Path) -> Result<(), MemoryError> {
        let rest = self.rest_url()?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| qerr(format!("{}: {e}", path.display())))?;
        let name = path.file_name().map_or_else(
            || "memory.snapshot".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        );
        let part = reqwest::multipart::Part::bytes(bytes).file_name(name);
        let form = reqwest::multipart::Form::new().part("snapshot", part);
        let url = format!(
            "{rest}/collections/{}/snapshots/upload?wait=true&priority=snapshot",
            self.collection
        );
        let response = self
            .authorized(self.http.post(url))
            .multipart(form)
            .send()
            .await
            .map_err(|e| qerr(format!("snapshot upload: {e}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(qerr(format!(
                "snapshot upload refused: {status} {}",
                body.chars().take(300).collect::<String>()
            )));
        }
        Ok(())
    }

    fn rest_url(&self) -> Result<&str, MemoryError> {
        self.rest.as_deref().ok_or_else(|| {
            MemoryError::Config(
                "Qdrant's REST URL is unknown; set QDRANT_REST_URL for snapshots".to_owned(),
            )
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.header("api-key", key.expose_secret()),
            None => request,
        }
    }
}
