//! The `QMatMul` operator: `y = x·Wᵀ` for 4- and 5-bit weights kept in their GGUF blocks
//! ([`seam_kernels::qmatmul`]), on ONNX Runtime's thread pool.
//!
//! `MatMulNBits` cannot compute GGUF's `w = d·q + m` blocks exactly and fast: the graphs added
//! the offsets with a separate f32 `Gemm` over the activations' block sums, which streamed 13 MB
//! of f32 per token on one thread and cost a fifth of a decode step. This operator reads the
//! blocks with their scales and offsets (f16 where the file has f16: 5 bits a weight for Q4_1, as
//! GGUF stores it, against 6 plus the correction), eight output columns interleaved, and adds the offsets inside the dot
//! product.
//!
//! Inputs: `x` f32 `[..., K]`; `w` uint8, the `N × K` layer in the layout `format` names
//! ([`Format::pack`]). Output: f32 `[..., N]`. Attributes: `K`, `N`, `format` ([`Format::code`]),
//! and `glu` (optional, 0 by default): with 1, `w` holds `2N` columns, a feed-forward layer's
//! gate then its up projection, and the output is `silu(gate)·up` ([`MatMul::glu`]), which
//! spares the graph two nodes and a `[..., 2N]` intermediate.

use crate::onnx::{Attr, GraphBuilder};
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput, ShapeInferenceContext,
};
use ort::value::{Shape, SymbolicDimensions, TensorElementType, ValueType};
use seam_kernels::qmatmul::{BLOCK, Format, GROUP, MatMul, Part, Quantized};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Domain of Seam's operators in the model graphs.
pub const DOMAIN: &str = "ai.seam";
const OP: &str = "QMatMul";

/// The domain every session registers, so that any graph may use Seam's operators (this one
/// and [`super::skip_norm`]'s).
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(QMatMul)?
        .add(super::skip_norm::SkipRmsNorm)
}

/// Adds `x·Wᵀ` to `g`: `w` names a uint8 initializer of `n` rows of `k/32` blocks in `format`.
pub fn node(g: &mut GraphBuilder, x: &str, w: &str, k: usize, n: usize, format: Format) -> String {
    node_with(g, x, w, (k, n), format, false)
}

/// Adds `silu(x·Gᵀ)·(x·Uᵀ)` to `g`: `w` names a uint8 initializer of the gate's `n` rows then the
/// up projection's `n` rows, of `k/32` blocks each in `format`.
pub fn glu_node(
    g: &mut GraphBuilder,
    x: &str,
    w: &str,
    k: usize,
    n: usize,
    format: Format,
) -> String {
    node_with(g, x, w, (k, n), format, true)
}

fn node_with(
    g: &mut GraphBuilder,
    x: &str,
    w: &str,
    (k, n): (usize, usize),
    format: Format,
    glu: bool,
) -> String {
    g.import_domain(DOMAIN);
    let mut attrs = vec![
        Attr::Int("K", k as i64),
        Attr::Int("N", n as i64),
        Attr::Int("format", format.code()),
    ];
    if glu {
        attrs.push(Attr::Int("glu", 1));
    }
    g.op(OP, DOMAIN, &[x, w], attrs)
}

struct QMatMul;

/// The validated attributes of one node.
#[derive(Debug, Clone, Copy)]
struct Dims {
    k: usize,
    n: usize,
    format: Format,
    /// Bytes of the weight input.
    bytes: usize,
    /// Whether the node is a gated product (`2N` columns in).
    glu: bool,
}

impl Operator for QMatMul {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Uint8),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    /// `[..., K] → [..., N]`: ONNX Runtime plans the buffers after the node (the `Split` of
    /// gate|up took 15× as long without it).
    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let n: i64 = ctx.attr("N")?;
        let inputs = ctx.inputs();
        let Some(ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        }) = inputs.first()
        else {
            return Err(ort::Error::new(format!("{OP}: x is not a tensor")));
        };
        let rank = shape.len();
        if rank == 0 {
            return Err(ort::Error::new(format!("{OP}: x is a scalar")));
        }
        let dims = shape.iter().take(rank - 1).copied().chain([n]);
        let symbols = dimension_symbols
            .iter()
            .take(rank - 1)
            .cloned()
            .chain([String::new()]);
        ctx.set_output(
            0,
            &ValueType::Tensor {
                ty: TensorElementType::Float32,
                shape: Shape::new(dims),
                dimension_symbols: SymbolicDimensions::new(symbols),
            },
        )
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let attr = |name: &str| {
            ctx.get::<i64>(name)
                .ok_or_else(|| ort::Error::new(format!("{OP}: attribute {name} is missing")))
        };
        let (k, n, code) = (attr("K")?, attr("N")?, attr("format")?);
        let format = Format::from_code(code)
            .ok_or_else(|| ort::Error::new(format!("{OP}: unknown weight format {code}")))?;
        let glu = match ctx.get::<i64>("glu").unwrap_or(0) {
            0 => false,
            1 => true,
            other => {
                return Err(ort::Error::new(format!("{OP}: glu = {other}, want 0 or 1")));
            }
        };
        let shape = match (usize::try_from(k), usize::try_from(n)) {
            (Ok(k), Ok(n))
                if k > 0 && k.is_multiple_of(BLOCK) && n > 0 && n.is_multiple_of(GROUP) =>
            {
                let bytes = (n / GROUP)
                    .checked_mul(if glu { 2 } else { 1 })
                    .and_then(|b| b.checked_mul(k / BLOCK))
                    .and_then(|b| b.checked_mul(format.block_bytes()))
                    .ok_or_else(|| ort::Error::new(format!("{OP}: {n}×{k} is too large")))?;
                Dims {
                    k,
                    n,
                    format,
                    bytes,
                    glu,
                }
            }
            _ => {
                return Err(ort::Error::new(format!(
                    "{OP}: K = {k} must be a positive multiple of {BLOCK} and N = {n} of {GROUP}"
                )));
            }
        };
        Ok(Box::new(move |ctx: &ComputeContext| compute(ctx, shape)))
    }
}

thread_local! {
    /// The quantized activations of the last call on this thread (buffers reused).
    static ACTIVATIONS: RefCell<Quantized> = RefCell::new(Quantized::default());
}

fn compute(ctx: &ComputeContext, s: Dims) -> ort::Result<()> {
    let missing = |what: &str| ort::Error::new(format!("{OP}: no input {what}"));
    let x = ctx.input(0)?.ok_or_else(|| missing("x"))?;
    let w = ctx.input(1)?.ok_or_else(|| missing("w"))?;
    let (x_shape, x) = x.try_extract_tensor::<f32>()?;
    let (_, w) = w.try_extract_tensor::<u8>()?;
    let mut out_shape: Vec<i64> = x_shape.iter().copied().collect();
    match out_shape.last_mut() {
        Some(last) if *last == s.k as i64 => *last = s.n as i64,
        _ => {
            return Err(ort::Error::new(format!(
                "{OP}: x has shape {out_shape:?}, its last dimension must be K = {}",
                s.k
            )));
        }
    }
    let want = s.bytes;
    if w.len() != want {
        return Err(ort::Error::new(format!(
            "{OP}: {} weight bytes for {}×{} in {:?}, want {want}",
            w.len(),
            if s.glu { 2 * s.n } else { s.n },
            s.k,
            s.format
        )));
    }
    let mut out = ctx
        .output(0, out_shape)?
        .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?;
    let (_, y) = out.try_extract_tensor_mut::<f32>()?;
    ACTIVATIONS.with(|cell| {
        // A re-entered call on this thread (none is expected) quantizes into its own buffers.
        let mut own = Quantized::default();
        let mut held = cell.try_borrow_mut();
        let q = match held.as_deref_mut() {
            Ok(q) => q,
            Err(_) => &mut own,
        };
        // A panic must not unwind into ONNX Runtime's frames: it becomes the call's error.
        let panicked = AtomicBool::new(false);
        let parts: Vec<Mutex<Option<Part<'_>>>> = q
            .parts(x, s.k)
            .into_iter()
            .map(|p| Mutex::new(Some(p)))
            .collect();
        parallel(ctx, parts.len(), &panicked, |i| {
            let part = parts[i]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(part) = part {
                part.quantize();
            }
        })?;
        drop(parts);
        if panicked.load(Ordering::Relaxed) {
            return Err(ort::Error::new(format!(
                "{OP}: quantizing the activations panicked"
            )));
        }
        let mm = if s.glu {
            MatMul::glu(s.format, w, s.n, q, y)
        } else {
            MatMul::new(s.format, w, s.n, q, y)
        };
        parallel(ctx, mm.tasks(), &panicked, |t| mm.run(t))?;
        if panicked.into_inner() {
            return Err(ort::Error::new(format!("{OP}: the kernel panicked")));
        }
        Ok(())
    })
}

/// Runs `task(0..n)` on ONNX Runtime's pool (on this thread if there is one task); a task that
/// panics sets `panicked`.
fn parallel(
    ctx: &ComputeContext,
    n: usize,
    panicked: &AtomicBool,
    task: impl Fn(usize) + Sync + Send,
) -> ort::Result<()> {
    let task = |i: usize| {
        if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
            panicked.store(true, Ordering::Relaxed);
        }
    };
    match n {
        0 => Ok(()),
        1 => {
            task(0);
            Ok(())
        }
        _ => ctx.par_for(n, n, task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::linear::{Q4Linear, Q41};
    use crate::onnx::{Dim, session_from_memory};
    use ort::value::TensorRef;

    /// A Q4_1 layer of `n × k` pseudo-random blocks.
    fn layer(n: usize, k: usize) -> Q4Linear {
        let blocks: Vec<Q41> = (0..n * k / BLOCK)
            .map(|i| Q41 {
                d: half::f16::from_f32(0.01 + 0.001 * (i % 13) as f32).to_f32(),
                m: half::f16::from_f32(-0.05 - 0.002 * (i % 7) as f32).to_f32(),
                q: std::array::from_fn(|j| ((i * 5 + j * 3) % 16) as u8),
            })
            .collect();
        Q4Linear::from_q4_1(n, k, &blocks)
    }

    /// Runs one `QMatMul` node over `x` (`[rows, k]`) with the layer's packed blocks (or `bytes`
    /// in their place).
    fn run(w: &Q4Linear, x: &[f32], bytes: Option<Vec<u8>>) -> ort::Result<Vec<f32>> {
        run_node(w, x, bytes, false)
    }

    /// [`run`], or with `glu` the gated node over the layer's two halves of rows.
    fn run_node(
        w: &Q4Linear,
        x: &[f32],
        bytes: Option<Vec<u8>>,
        glu: bool,
    ) -> ort::Result<Vec<f32>> {
        seam_shared::ort_env::init(2).expect("onnx runtime");
        let (format, packed) = w.blocks().expect("n is a multiple of 8");
        let bytes = bytes.unwrap_or(packed);
        let mut g = GraphBuilder::new("qmatmul");
        let input = g.input_f32("x", &[Dim::Named("rows"), Dim::Fixed(w.k as i64)]);
        let b = g.init_u8("w", &[bytes.len() as i64], bytes);
        let n = if glu { w.n / 2 } else { w.n };
        let y = if glu {
            glu_node(&mut g, &input, &b, w.k, n, format)
        } else {
            node(&mut g, &input, &b, w.k, n, format)
        };
        g.output_f32(&y, "y", &[Dim::Named("rows"), Dim::Fixed(n as i64)]);
        let mut session = session_from_memory(&g.finish("one QMatMul")).expect("session");
        let rows = x.len() / w.k;
        let out =
            session.run(ort::inputs!["x" => TensorRef::from_array_view(([rows, w.k], x))?])?;
        Ok(out["y"].try_extract_tensor::<f32>()?.1.to_vec())
    }

    #[test]
    fn the_node_computes_the_gguf_layer_and_each_row_alone_equals_the_batch() {
        let (n, k, rows) = (48, 128, 70);
        let w = layer(n, k);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let y = run(&w, &x, None).expect("runs");
        for r in 0..rows {
            for c in 0..n {
                // The GGUF function in f64, on the unquantized activations: the int8
                // activations cost about 1% of the row's magnitude.
                let xs = &x[r * k..][..k];
                let exact: f64 = (0..k)
                    .map(|i| f64::from(w.weight(c, i)) * f64::from(xs[i]))
                    .sum();
                let scale: f64 = (0..k)
                    .map(|i| f64::from(w.weight(c, i) * xs[i]).abs())
                    .sum();
                let got = f64::from(y[r * n + c]);
                assert!(
                    (got - exact).abs() <= 0.01 * scale,
                    "[{r},{c}] {got} vs {exact}"
                );
            }
        }
        for r in [0, 33, rows - 1] {
            let alone = run(&w, &x[r * k..][..k], None).expect("runs");
            assert_eq!(alone[..], y[r * n..][..n], "row {r}");
        }
    }

    #[test]
    fn a_weight_of_the_wrong_size_is_an_error() {
        let w = layer(8, 64);
        let err = run(&w, &[0.5; 64], Some(vec![0; 17])).expect_err("17 bytes");
        assert!(err.to_string().contains("17 weight bytes"), "{err}");
    }

    #[test]
    fn the_gated_node_is_silu_of_the_gate_times_up() {
        let (n, k, rows) = (32, 64, 9);
        let w = layer(2 * n, k);
        let x: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 20.0)
            .collect();
        let both = run(&w, &x, None).expect("runs");
        let gated = run_node(&w, &x, None, true).expect("runs");
        for r in 0..rows {
            for c in 0..n {
                let (gate, up) = (both[r * 2 * n + c], both[r * 2 * n + n + c]);
                let want = seam_kernels::qmatmul::silu(gate) * up;
                assert_eq!(gated[r * n + c].to_bits(), want.to_bits(), "[{r},{c}]");
            }
        }
        let err = run_node(&w, &x, Some(vec![0; 40]), true).expect_err("40 bytes");
        assert!(err.to_string().contains("for 64×64"), "{err}");
    }
}
