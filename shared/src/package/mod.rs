//! Model packages: a directory with `manifest.toml` and the files it lists, each checked by
//! SHA-256. The package digest is the SHA-256 of the manifest, so it covers every file.
//!
//! Two kinds share the format and the loader: decoder packages ([`Manifest`], no `kind` key)
//! and sentence-encoder packages with their intent head ([`EncoderManifest`], `kind =
//! "encoder"`).

mod encoder_manifest;
mod manifest;

pub use encoder_manifest::{
    DataRef, ENCODER_KIND, EncoderManifest, EncoderSpec, IntentHeadSpec, SmoothingSpec,
    encoder_digest,
};
pub use manifest::{
    Architecture, Drafter, ENCODER_FORMAT_VERSION, FORMAT_VERSION, HEAD_TABLE_ALIGN, LinearType,
    Manifest, Segment, Source, StatePredictor, Weights, head_table_layout,
};

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

/// What the loader needs from a manifest type.
pub trait PackageManifest: Serialize + DeserializeOwned + Clone {
    /// The value of the manifest's `kind` key for this type (`decoder` when the key is absent).
    const KIND: &'static str;
    /// Checks the internal consistency of the manifest (not the files on disk).
    fn validate(&self) -> Result<(), String>;
    /// SHA-256 (hex) of every file of the package except the manifest, by relative path.
    fn files(&self) -> &BTreeMap<String, String>;
}

impl PackageManifest for Manifest {
    const KIND: &'static str = "decoder";
    fn validate(&self) -> Result<(), String> {
        Manifest::validate(self)
    }
    fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }
}

impl PackageManifest for EncoderManifest {
    const KIND: &'static str = ENCODER_KIND;
    fn validate(&self) -> Result<(), String> {
        EncoderManifest::validate(self)
    }
    fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }
}

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Name of the manifest file at the root of a package.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// Largest manifest accepted (it lists files and dimensions; anything bigger is not ours).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// A model package on disk whose manifest is valid and whose files match their checksums.
#[derive(Debug, Clone)]
pub struct Package<M = Manifest> {
    dir: PathBuf,
    manifest: M,
    digest: String,
}

/// A sentence-encoder package (encoder graph, tokenizer, intent head).
pub type EncoderPackage = Package<EncoderManifest>;

impl Package {
    /// Opens the decoder package in `dir`: parses and validates the manifest, then checks the
    /// SHA-256 of every listed file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_kind(dir)
    }
}

impl<M: PackageManifest> Package<M> {
    /// Opens a package whose manifest is of kind `M` (see [`Package::open`]).
    pub fn open_kind(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Integrity {
                dir: dir.clone(),
                reason: "not a directory (run `seam-edge model import` to create a package)".into(),
            });
        }
        let path = dir.join(MANIFEST_FILE);
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Manifest {
                path,
                reason: format!(
                    "{} bytes is larger than the {MAX_MANIFEST_BYTES} allowed",
                    meta.len()
                ),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = toml::from_str(text).map_err(|e| Error::Manifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let kind = match table.get("kind") {
            None => "decoder",
            Some(toml::Value::String(k)) => k.as_str(),
            Some(_) => "(not a string)",
        };
        if kind != M::KIND {
            return Err(Error::Manifest {
                path,
                reason: format!(
                    "this is a `{kind}` package where a `{}` one is needed",
                    M::KIND
                ),
            });
        }
        let manifest: M = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Manifest {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        manifest
            .validate()
            .map_err(|reason| Error::Manifest { path, reason })?;
        for (rel, expected) in manifest.files() {
            let actual = sha256_file(&dir.join(rel))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::Integrity {
                    dir: dir.clone(),
                    reason: format!("`{rel}` has SHA-256 {actual}, the manifest says {expected}"),
                });
            }
        }
        Ok(Package {
            digest: hex(&Sha256::digest(&bytes)),
            dir,
            manifest,
        })
    }

    /// The package directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &M {
        &self.manifest
    }

    /// SHA-256 (hex) of the manifest, which lists the SHA-256 of every file: two packages with
    /// the same digest compute the same function.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Absolute path of a file of the package.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Writes `manifest` into `dir` after validating it; returns the package digest.
pub fn write_manifest<M: PackageManifest>(dir: &Path, manifest: &M) -> Result<String> {
    let path = dir.join(MANIFEST_FILE);
    manifest.validate().map_err(|reason| Error::Manifest {
        path: path.clone(),
        reason,
    })?;
    let text = toml::to_string_pretty(manifest).map_err(|e| Error::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    std::fs::write(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
    Ok(hex(&Sha256::digest(text.as_bytes())))
}

/// SHA-256 (hex) of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 (hex) of bytes in memory.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
