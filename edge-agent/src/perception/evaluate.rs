//! Accuracy of an encoder package on labelled data: in-scope accuracy (best intent, threshold
//! ignored), the false-rejection rate of the out-of-scope threshold on in-scope texts, and the
//! recall of out-of-scope texts when the data has some (label `oos`).

use super::classifier::Perception;
use super::dataset::{Example, OOS_LABEL};
use crate::error::Result;
use crate::import::encoder::embed_all;
use crate::perception::encoder::Embedding;
use std::collections::HashMap;

/// Figures of one evaluation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    pub in_scope: usize,
    /// Best intent correct, threshold ignored.
    pub accuracy: f32,
    /// Best intent correct and not rejected as out of scope.
    pub accuracy_with_threshold: f32,
    /// In-scope texts rejected as out of scope.
    pub false_rejection: f32,
    pub out_of_scope: usize,
    /// Out-of-scope texts rejected; `None` without such texts.
    pub oos_recall: Option<f32>,
    /// Texts whose labels the head does not know (neither a class nor `oos`).
    pub unknown_labels: usize,
    pub threshold: f32,
}

/// Evaluates `p` on `rows`.
pub fn evaluate(p: &mut Perception, rows: &[Example]) -> Result<Evaluation> {
    let index: HashMap<String, usize> = p
        .labels()
        .iter()
        .enumerate()
        .map(|(i, (l, _))| (l.clone(), i))
        .collect();
    let dim = p.encoder_mut().hidden();
    let x = embed_all(p.encoder_mut(), rows, false, "evaluation")?;
    let (mut in_scope, mut correct, mut correct_kept, mut rejected) = (0, 0, 0, 0);
    let (mut oos, mut oos_caught, mut unknown) = (0, 0, 0);
    for (row, values) in rows.iter().zip(x.chunks_exact(dim)) {
        let c = p.classify_embedding(
            &Embedding {
                values: values.to_vec(),
                tokens: 0,
                truncated: false,
            },
            1,
        );
        if row.label == OOS_LABEL {
            oos += 1;
            oos_caught += usize::from(c.out_of_scope);
        } else if index.contains_key(&row.label) {
            in_scope += 1;
            let hit = c.top[0].intent == row.label;
            correct += usize::from(hit);
            correct_kept += usize::from(hit && !c.out_of_scope);
            rejected += usize::from(c.out_of_scope);
        } else {
            unknown += 1;
        }
    }
    let rate = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f32 / b as f32 };
    Ok(Evaluation {
        in_scope,
        accuracy: rate(correct, in_scope),
        accuracy_with_threshold: rate(correct_kept, in_scope),
        false_rejection: rate(rejected, in_scope),
        out_of_scope: oos,
        oos_recall: (oos > 0).then(|| rate(oos_caught, oos)),
        unknown_labels: unknown,
        threshold: p.threshold(),
    })
}
