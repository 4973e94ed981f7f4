//! The package's draft head on the device: one ONNX session and the shortlist its logits
//! range over (see [`seam_shared::package::Drafter`]).

use crate::error::{Error, Result};
use crate::import::drafter::graph::io;
use crate::onnx::session_from_file;
use ort::session::Session;
use ort::value::TensorRef;
use seam_shared::package::{Drafter as DrafterSpec, Package};

/// A loaded draft head.
pub struct Drafter {
    session: Session,
    shortlist: Vec<u32>,
    d: usize,
    heldout_acceptance: Vec<f64>,
}

impl std::fmt::Debug for Drafter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drafter")
            .field("shortlist", &self.shortlist.len())
            .finish_non_exhaustive()
    }
}

/// One drafter step for a batch of rows.
#[derive(Debug, Clone)]
pub struct DraftOut {
    /// Estimates of the rows' final-layer states, `[S, d]`.
    pub features: Vec<f32>,
    /// Logits over the shortlist, `[S, shortlist]`.
    pub logits: Vec<f32>,
}

impl Drafter {
    /// Loads and checks the drafter of `package`.
    pub fn load(package: &Package, spec: &DrafterSpec, d: usize, vocab: u32) -> Result<Drafter> {
        let path = package.path(&spec.shortlist);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        if bytes.len() != spec.shortlist_size as usize * 4 {
            return Err(Error::Package(format!(
                "{} has {} bytes, expected {} for {} token ids",
                spec.shortlist,
                bytes.len(),
                spec.shortlist_size * 4,
                spec.shortlist_size
            )));
        }
        let shortlist: Vec<u32> = bytes
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(t) = shortlist.iter().find(|&&t| t >= vocab) {
            return Err(Error::Package(format!(
                "{}: token {t} is outside the vocabulary of {vocab}",
                spec.shortlist
            )));
        }
        Ok(Drafter {
            session: session_from_file(&package.path(&spec.graph))?,
            shortlist,
            d,
            heldout_acceptance: spec.heldout_acceptance.iter().map(|&a| a as f64).collect(),
        })
    }

    /// Runs the head on rows of previous features and current-token embeddings (`[S, d]`).
    pub fn run(&mut self, features: &[f32], embeds: &[f32]) -> Result<DraftOut> {
        let s = features.len() / self.d;
        if s == 0 || features.len() != s * self.d || embeds.len() != features.len() {
            return Err(Error::InvalidArgument(format!(
                "drafter inputs of {} and {} values are not rows of {}",
                features.len(),
                embeds.len(),
                self.d
            )));
        }
        let out = self.session.run(ort::inputs![
            io::FEATURE => TensorRef::from_array_view(([s, self.d], features))?,
            io::EMBED => TensorRef::from_array_view(([s, self.d], embeds))?,
        ])?;
        Ok(DraftOut {
            features: out[io::FEATURE_OUT].try_extract_tensor::<f32>()?.1.to_vec(),
            logits: out[io::LOGITS].try_extract_tensor::<f32>()?.1.to_vec(),
        })
    }

    /// Token ids of the logits' columns.
    pub fn shortlist(&self) -> &[u32] {
        &self.shortlist
    }

    /// Acceptance per chain position measured at import.
    pub fn heldout_acceptance(&self) -> &[f64] {
        &self.heldout_acceptance
    }
}
