//! Does ONNX Runtime compute a row run alone the same way as the same row run beside others, on
//! this CPU? Its CPU kernels (`MatMulNBits` of 8-bit layers and heads, the f32 `Gemm` of the
//! f32-compute graphs' Q4_1 correction) take a separate single-row path on some CPUs (seen on
//! AVX2 machines without AVX-512); Seam's `QMatMul` computes every row alike by construction. The results
//! differ from the multi-row path by enough to flip a near-tie between two tokens. Where the paths
//! differ, the model runs its graphs on two rows at least: a lone row is repeated and the copy's
//! outputs are dropped. Then a token decoded alone, a prompt, a chain or tree of drafts, and a
//! worker's batch of sessions compute each row alike, which is what makes a speculative split
//! answer exactly the local one. Where the paths agree, a lone row runs alone: on an AVX2
//! machine the second row cut one-thread decode from 43 to 23–30 tokens/s.

use crate::error::Result;
use ort::session::Session;
use ort::value::TensorRef;

/// One graph to probe, fed two different rows per input.
pub(crate) struct Probe<'a> {
    pub session: &'a mut Session,
    /// Input name, width of a row, and two rows (`[2, width]`).
    pub inputs: Vec<(&'static str, usize, Vec<f32>)>,
    pub output: &'static str,
}

/// The fewest rows the graphs must run on so that a row's result does not depend on the rows
/// computed with it: 1 when every probe's first row comes out bit for bit the same alone as
/// beside the second row, else 2.
pub(crate) fn graph_min_rows(probes: Vec<Probe<'_>>) -> Result<usize> {
    for p in probes {
        let alone = run(p.session, &p.inputs, 1, p.output)?;
        let beside = run(p.session, &p.inputs, 2, p.output)?;
        if alone[..] != beside[..alone.len()] {
            return Ok(2);
        }
    }
    Ok(1)
}

fn run(
    session: &mut Session,
    inputs: &[(&'static str, usize, Vec<f32>)],
    rows: usize,
    output: &str,
) -> Result<Vec<f32>> {
    let values = inputs
        .iter()
        .map(|(name, width, data)| {
            Ok((
                *name,
                TensorRef::from_array_view(([rows, *width], &data[..rows * width]))?.into(),
            ))
        })
        .collect::<Result<Vec<(&str, ort::session::SessionInputValue<'_>)>>>()?;
    let out = session.run(values)?;
    Ok(out[output].try_extract_tensor::<f32>()?.1.to_vec())
}

/// `n` deterministic values spread over [-1, 1) (a fixed linear congruential sequence), to
/// stand in for a graph input that has no cheap real value at load time.
pub(crate) fn spread(n: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_u32;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_values_are_varied_and_within_bounds() {
        let v = spread(1000);
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!(v.windows(2).all(|w| w[0] != w[1]));
    }
}
