//! `y = W·x` for 4-, 5- and 6-bit weights in GGUF-style blocks (`w = d·q + m` per 32 inputs,
//! or `w = d·(q − 32)` per 16), with the activations quantized to int8 per block of 32, as
//! llama.cpp does for its Q4, Q5 and Q6 dot products.
//!
//! A weight block holds 32 codes `q` in 0..15 (or 0..31) with a scale `d` and an offset `m`:
//! GGUF Q4_1 as stored, Q4_0 with `m = −8d`, a Q4_K sub-block with `d` and `m` its scale and
//! min products; Q5_0 with `m = −16d`, Q5_1, Q5_K alike. A 6-bit block ([`Format::Q6F32`]) is
//! two Q6_K sub-blocks of 16: codes in 0..63 and a scale `d` per half, `w = d·(q − 32)`.
//! An activation block is `x ≈ dx·qx` with `qx` in −127..127 and `sx = dx·Σqx`; a block then
//! contributes `d·dx·Σ q·qx + m·sx`, and a 6-bit one `d_h·dx·(Σ_h q·qx − 32·Σ_h qx)` per half
//! `h`, the sums exact integers (the quantizer keeps each half's `Σ qx`).
//!
//! The weights are stored for the kernel, [`GROUP`] output columns together ([`Format`]): one
//! 256-bit vector holds four inputs of each of eight columns, so that `vpmaddubsw` against four
//! activation bytes broadcast computes eight columns at once, and one multiply scales all eight.
//! Eight of its 16-bit results add up without overflow (`8·2·15·127 < 2^15`; four for 5-bit
//! codes, `4·2·31·127 < 2^15`), so a block costs one or two widenings per eight columns.
//!
//! The result is defined exactly, whatever the tiling, the thread that runs it, or the
//! instructions: `Σ q·qx` is an exact integer; then, block after block,
//! `acc = fma(Σq·qx, d·dx, acc)` and `off = fma(m, sx, off)`; the output is `acc + off` (6-bit:
//! `acc = fma(Σ_h q·qx − 32·Σ_h qx, d_h·dx, acc)` for the first half then the second, and the
//! output is `acc`). So a
//! row's result does not depend on the other rows of the batch (a decoded token equals the
//! same token verified among drafts), and the AVX2 kernels ([`avx2`], with or without VNNI)
//! equal the portable one ([`portable`]) bit for bit.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(not(target_arch = "x86_64"))]
mod avx2 {
    /// Never made on this architecture.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Cpu;
    impl Cpu {
        pub(super) fn detect(_: bool) -> Option<Cpu> {
            None
        }
    }
    pub(super) fn available(_: bool) -> bool {
        false
    }
    pub(super) fn has_avx2() -> bool {
        false
    }
    pub(super) fn quantize(_: &[f32], _: &mut [i8], _: &mut [[f32; 2]], _: &mut [[i32; 2]]) {
        unreachable!("no AVX2 quantizer on this architecture")
    }
    pub(super) fn silu_mul<const RX: usize>(
        _: Cpu,
        g: &mut [[f32; super::GROUP]; RX],
        u: &[[f32; super::GROUP]; RX],
    ) {
        super::silu_mul(g, u)
    }
    pub(super) fn tile<const RX: usize>(
        t: &super::Tile<'_, RX>,
        _: Cpu,
    ) -> [[f32; super::GROUP]; RX] {
        super::portable::tile(t)
    }
}
mod portable;
#[cfg(test)]
mod tests;

/// Inputs per block (one scale and offset each).
pub const BLOCK: usize = 32;
/// Output columns stored together: a layer's outputs must be a multiple of this.
pub const GROUP: usize = 8;
/// Bytes of the low 4 bits of the codes of one block of a group (8 columns × 32 codes).
const CODES: usize = GROUP * BLOCK / 2;
/// Bytes of the fifth bits of 5-bit codes of one block of a group.
const FIFTH_BITS: usize = GROUP * BLOCK / 8;
/// Bytes of the top two bits of 6-bit codes of one block of a group.
const TOP_BITS: usize = GROUP * BLOCK / 4;
/// The offset of 6-bit codes: a code `q` stands for `q − 32`.
const SIX_OFFSET: i32 = 32;
/// Groups of columns per task.
const GROUPS_PER_TASK: usize = 4;
/// Activation rows a task takes at a time.
const ROW_CHUNK: usize = 64;
/// Rows of a small batch (a decoded token, drafts to verify).
const FEW_ROWS: usize = 8;

/// How a group's block is stored: `[d; 8]`, `[m; 8]`, then 128 bytes of codes in four 32-byte
/// vectors: in vector `t`, bytes `4c..4c+4` hold (the low 4 bits of) inputs `4t..4t+4` of column
/// `c` in their low nibbles and inputs `16+4t..16+4t+4` in their high nibbles. Five-bit codes
/// add 32 bytes of fifth bits: byte `4c+e`, bit `2t`, is that of input `4t+e` of column `c`,
/// bit `2t+1` that of input `16+4t+e`. Six-bit codes add 64 bytes of top bits instead: in the
/// first 32, byte `4c+e`, bits `2t..2t+2`, are bits 4 and 5 of input `4t+e` of column `c`; in
/// the next 32, those of input `16+4t+e`; and their `[d; 8], [m; 8]` are the scales of the two
/// halves. A layer is its groups in order, each its blocks in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 4-bit codes, scales and offsets as f16 (5 bits a weight, as GGUF Q4_1).
    Q4F16,
    /// 4-bit codes, scales and offsets as f32: products that f16 cannot hold (Q4_K).
    Q4F32,
    /// 5-bit codes, scales and offsets as f16 (6 bits a weight: Q5_0, Q5_1).
    Q5F16,
    /// 5-bit codes, scales and offsets as f32 (Q5_K).
    Q5F32,
    /// 6-bit codes in halves of 16 with an f32 scale each (Q6_K, and Q3_K's codes).
    Q6F32,
}

impl Format {
    /// The format of `bits`-bit codes (4 or 5) with f16 or f32 scales and offsets.
    pub const fn new(bits: u32, f16: bool) -> Option<Format> {
        match (bits, f16) {
            (4, true) => Some(Format::Q4F16),
            (4, false) => Some(Format::Q4F32),
            (5, true) => Some(Format::Q5F16),
            (5, false) => Some(Format::Q5F32),
            (6, false) => Some(Format::Q6F32),
            _ => None,
        }
    }

    /// Bits per code.
    pub const fn bits(self) -> u32 {
        match self {
            Format::Q4F16 | Format::Q4F32 => 4,
            Format::Q5F16 | Format::Q5F32 => 5,
            Format::Q6F32 => 6,
        }
    }

    /// Whether scales and offsets are f16.
    pub const fn f16(self) -> bool {
        matches!(self, Format::Q4F16 | Format::Q5F16)
    }

    /// Bytes per block of a group (8 columns × 32 inputs).
    pub const fn block_bytes(self) -> usize {
        self.codes_at()
            + CODES
            + match self.bits() {
                5 => FIFTH_BITS,
                6 => TOP_BITS,
                _ => 0,
            }
    }

    /// The code a graph stores the format as.
    pub const fn code(self) -> i64 {
        match self {
            Format::Q4F16 => 0,
            Format::Q4F32 => 1,
            Format::Q5F16 => 2,
            Format::Q5F32 => 3,
            Format::Q6F32 => 4,
        }
    }

    pub const fn from_code(code: i64) -> Option<Format> {
        match code {
            0 => Some(Format::Q4F16),
            1 => Some(Format::Q4F32),
            2 => Some(Format::Q5F16),
            3 => Some(Format::Q5F32),
            4 => Some(Format::Q6F32),
            _ => None,
        }
    }

    /// Offset of the codes within a group's block.
    const fn codes_at(self) -> usize {
        2 * GROUP * if self.f16() { 2 } else { 4 }
    }

    /// `(d, m)` of the 8 columns of the group's block starting at `block[0]`.
    #[inline(always)]
    fn params(self, block: &[u8]) -> ([f32; GROUP], [f32; GROUP]) {
        let value = |i: usize| {
            if self.f16() {
                f16_to_f32(u16::from_le_bytes([block[2 * i], block[2 * i + 1]]))
            } else {
                f32::from_le_bytes(std::array::from_fn(|j| block[4 * i + j]))
            }
        };
        (
            std::array::from_fn(value),
            std::array::from_fn(|c| value(GROUP + c)),
        )
    }

    /// Packs an `n × k` layer (`n` a multiple of [`GROUP`], `k` of [`BLOCK`]) whose block `b`
    /// of row `r` is `block(r, b) = (d, m, codes in input order)`, codes below `2^bits`
    /// ([`Format::Q6F32`]: `(d of inputs 0..16, d of inputs 16..32, codes)`). Scales and
    /// offsets must be exact in the format (f16 values for the f16 formats).
    pub fn pack(
        self,
        n: usize,
        k: usize,
        block: impl Fn(usize, usize) -> (f32, f32, [u8; BLOCK]),
    ) -> Vec<u8> {
        assert!(
            n.is_multiple_of(GROUP) && k.is_multiple_of(BLOCK),
            "{n}×{k}"
        );
        let mut out = Vec::with_capacity(n / GROUP * k / BLOCK * self.block_bytes());
        for g in 0..n / GROUP {
            for b in 0..k / BLOCK {
                let blocks: [(f32, f32, [u8; BLOCK]); GROUP] =
                    std::array::from_fn(|c| block(g * GROUP + c, b));
                for v in blocks.iter().map(|b| b.0).chain(blocks.iter().map(|b| b.1)) {
                    if self.f16() {
                        out.extend(f32_to_f16_exact(v).to_le_bytes());
                    } else {
                        out.extend(v.to_le_bytes());
                    }
                }
                for (_, _, q) in &blocks {
                    assert!(
                        q.iter().all(|&q| q >> self.bits() == 0),
                        "codes above {} bits",
                        self.bits()
                    );
                }
                for t in 0..4 {
                    for (_, _, q) in &blocks {
                        for e in 0..4 {
                            out.push((q[4 * t + e] & 0x0f) | ((q[16 + 4 * t + e] & 0x0f) << 4));
                        }
                    }
                }
                if self.bits() == 6 {
                    for half in [0, 16] {
                        for (_, _, q) in &blocks {
                            for e in 0..4 {
                                out.push(
                                    (0..4).fold(0, |h, t| {
                                        h | ((q[half + 4 * t + e] >> 4) << (2 * t))
                                    }),
                                );
                            }
                        }
                    }
                }
                if self.bits() == 5 {
                    for (_, _, q) in &blocks {
                        for e in 0..4 {
                            let bit = |i: usize, to: usize| ((q[i] >> 4) & 1) << to;
                            out.push((0..4).fold(0, |h, t| {
                                h | bit(4 * t + e, 2 * t) | bit(16 + 4 * t + e, 2 * t + 1)
                            }));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Widens the bits of a finite f16 (any sign; zero and subnormals included) to f32, exactly
/// (with denormal inputs not flushed to zero, as ONNX Runtime leaves them unless told). Not for
/// infinities and NaN, which [`Format::pack`] never writes.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    const REBASE: f32 = f32::from_bits((112 + 127) << 23); // 2^112
    let magnitude = f32::from_bits(u32::from(bits & 0x7fff) << 13) * REBASE;
    f32::from_bits(magnitude.to_bits() | (u32::from(bits & 0x8000) << 16))
}

/// The f16 bits of `v`, which must be an f16 value (checked by widening back).
fn f32_to_f16_exact(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    let bits = if exp == 0 && man == 0 {
        sign
    } else if exp >= 113 {
        sign | (((exp - 112) as u16) << 10) | (man >> 13) as u16
    } else {
        // Subnormal half: the value is man' · 2^-24.
        let full = man | 0x80_0000;
        sign | full.checked_shr((126 - exp) as u32).unwrap_or(0) as u16
    };
    assert_eq!(f16_to_f32(bits).to_bits(), b, "{v} is not an f16 value");
    bits
}

/// `v` rounded to the nearest integer, ties to even, for `|v| < 2^22` (NaN stays NaN): adding
/// and subtracting `1.5·2^23` leaves no fraction bits. `f32::round_ties_even` is a call to
/// `rintf` on baseline x86-64, a tenth of a prefill's time.
#[inline(always)]
fn round_ties_even(v: f32) -> f32 {
    (v + ROUND_MAGIC) - ROUND_MAGIC
}

/// `1.5 · 2^23`: adding and subtracting it rounds an f32 below `2^22` in magnitude to an integer.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Activation rows quantized per block: `x ≈ d·q`, `s = d·Σq`.
#[derive(Debug, Default, Clone)]
pub struct Quantized {
    k: usize,
    rows: usize,
    q: Vec<i8>,
    /// `[d, s]` of each block.
    ds: Vec<[f32; 2]>,
    /// `−32·Σq` over the first and the second half of each block: the offset of 6-bit codes
    /// times the activations, an exact integer the kernels start each half's sum from.
    halves: Vec<[i32; 2]>,
}

impl Quantized {
    /// Quantizes the rows of `x` (`[rows, k]`, `k` a multiple of [`BLOCK`]), reusing the buffers.
    /// A block's scale is `max|x|/127` and its codes `x/d` rounded to nearest (ties to even), in
    /// −127..127; a block holding a NaN or an infinity gets zero codes and a NaN scale, so that
    /// it poisons its outputs.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        self.parts(x, k).into_iter().for_each(Part::quantize);
    }

    /// [`Quantized::quantize`] in parts of up to [`ROW_CHUNK`] rows, which may run on any
    /// threads; the rows are quantized once every part has run.
    pub fn parts<'a>(&'a mut self, x: &'a [f32], k: usize) -> Vec<Part<'a>> {
        assert!(
            k > 0 && k.is_multiple_of(BLOCK),
            "k = {k} is not a multiple of {BLOCK}"
        );
        assert!(
            x.len().is_multiple_of(k),
            "{} values are not rows of {k}",
            x.len()
        );
        self.k = k;
        self.rows = x.len() / k;
        self.q.resize(x.len(), 0);
        self.ds.resize(x.len() / BLOCK, [0.0; 2]);
        self.halves.resize(x.len() / BLOCK, [0; 2]);
        let rows = ROW_CHUNK * k;
        x.chunks(rows)
            .zip(self.q.chunks_mut(rows))
            .zip(self.ds.chunks_mut(rows / BLOCK))
            .zip(self.halves.chunks_mut(rows / BLOCK))
            .map(|(((x, q), ds), halves)| Part { x, q, ds, halves })
            .collect()
    }
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn k(&self) -> usize {
        self.k
    }

    #[inline(always)]
    fn row(&self, r: usize) -> Row<'_> {
        let nb = self.k / BLOCK;
        Row {
            q: &self.q[r * self.k..][..self.k],
            ds: &self.ds[r * nb..][..nb],
            halves: &self.halves[r * nb..][..nb],
        }
    }
}

/// Rows of activations to quantize into their part of a [`Quantized`].
#[derive(Debug)]
pub struct Part<'a> {
    x: &'a [f32],
    q: &'a mut [i8],
    ds: &'a mut [[f32; 2]],
    halves: &'a mut [[i32; 2]],
}

impl Part<'_> {
    /// Quantizes the part's rows, with AVX2 where the CPU has it (the same result).
    pub fn quantize(self) {
        if avx2::has_avx2() {
            avx2::quantize(self.x, self.q, self.ds, self.halves);
        } else {
            self.quantize_portable();
        }
    }

    /// [`Part::quantize`] in plain Rust: the definition the AVX2 quantizer equals bit for bit. A
    /// block with a NaN or an infinity gets zero codes and a NaN scale.
    pub fn quantize_portable(self) {
        let blocks = self
            .x
            .chunks_exact(BLOCK)
            .zip(self.q.chunks_exact_mut(BLOCK))
            .zip(self.halves.iter_mut());
        for (((xb, qb), halves), ds) in blocks.zip(self.ds.iter_mut()) {
            if !xb.iter().all(|v| v.is_finite()) {
                qb.fill(0);
                *ds = [f32::NAN; 2];
                *halves = [0; 2];
                continue;
            }
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in qb.iter_mut().zip(xb) {
                // |v·inv| ≤ 127 up to rounding; the kernels rely on the bound.
                *q = round_ties_even(v * inv).clamp(-127.0, 127.0) as i8;
                sum += i32::from(*q);
            }
            *ds = [scale, scale * sum as f32];
            let first: i32 = qb[..BLOCK / 2].iter().map(|&q| i32::from(q)).sum();
            *halves = [-SIX_OFFSET * first, -SIX_OFFSET * (sum - first)];
        }
    }
}

/// One product `out = x·Wᵀ` (`[rows, n]`), cut in tasks of [`GROUPS_PER_TASK`] groups of
/// columns that may run in any order and on any threads.
pub struct MatMul<'a> {
    format: Format,
    w: &'a [u8],
    n: usize,
    x: &'a Quantized,
    /// `[rows, n]`, shared by the tasks: each element belongs to one task, which claims it in
    /// `claimed` before writing, so plain stores through the cells race with nothing.
    out: &'a [AtomicU32],
    /// Whether each task has run (or is running): a task runs once.
    claimed: Vec<AtomicBool>,
    /// The CPU's features for the AVX2 kernels, found once per product (`None`: portable).
    cpu: Option<avx2::Cpu>,
    /// Whether `w` holds `2n` columns, a gate's then an up projection's, and the output is
    /// [`silu`]`(gate)·up`.
    glu: bool,
}

/// The instructions a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust: any CPU.
    Portable,
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX2 with AVX-512 VNNI's `vpdpbusd` on 256-bit vectors (four products and their sum
    /// in one instruction).
    Avx2Vnni,
}

impl Kernel {
    /// Every kernel this CPU runs, the fastest last.
    pub fn available() -> Vec<Kernel> {
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx2Vnni]
            .into_iter()
            .filter(|k| match k {
                Kernel::Portable => true,
                Kernel::Avx2 => avx2::available(false),
                Kernel::Avx2Vnni => avx2::available(true),
            })
            .collect()
    }

    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().expect("the portable kernel"))
    }
}

/// The AVX2 kernels' proof of the CPU's features for `kernel`, `None` for the portable one.
/// Panics if the CPU does not run `kernel`.
fn cpu_for(kernel: Kernel) -> Option<avx2::Cpu> {
    match kernel {
        Kernel::Portable => None,
        Kernel::Avx2 | Kernel::Avx2Vnni => Some(
            avx2::Cpu::detect(kernel == Kernel::Avx2Vnni)
                .unwrap_or_else(|| panic!("{kernel:?} is not available")),
        ),
    }
}

impl<'a> MatMul<'a> {
    /// Panics if the sizes disagree: `n` must be a multiple of [`GROUP`], `w` hold the `n ×
    /// x.k()` layer in `format` ([`Format::pack`]) and `out` `x.rows()·n` values.
    pub fn new(
        format: Format,
        w: &'a [u8],
        n: usize,
        x: &'a Quantized,
        out: &'a mut [f32],
    ) -> Self {
        Self::build(format, w, n, x, out, false)
    }

    /// The gated product of a feed-forward layer: `w` holds `2n` columns, the gate's `n` then
    /// the up projection's `n` (as [`MatMul::new`] would take them side by side), and output
    /// `[r, c]` is `silu(gate[r, c])·up[r, c]` ([`silu`]), computed from the two products
    /// exactly as [`MatMul::new`] computes them. Panics as [`MatMul::new`] does.
    pub fn glu(
        format: Format,
        w: &'a [u8],
        n: usize,
        x: &'a Quantized,
        out: &'a mut [f32],
    ) -> Self {
        Self::build(format, w, n, x, out, true)
    }

    fn build(
        format: Format,
        w: &'a [u8],
        n: usize,
        x: &'a Quantized,
        out: &'a mut [f32],
        glu: bool,
    ) -> Self {
        assert!(
            n.is_multiple_of(GROUP),
            "n = {n} is not a multiple of {GROUP}"
        );
        let columns = if glu { 2 * n } else { n };
        assert_eq!(
            w.len(),
            columns / GROUP * x.k / BLOCK * format.block_bytes(),
            "weight bytes for {columns}×{}",
            x.k
        );
        assert_eq!(out.len(), x.rows * n, "output length");
        const { assert!(size_of::<AtomicU32>() == size_of::<f32>()) };
        const { assert!(align_of::<AtomicU32>() == align_of::<f32>()) };
        // SAFETY: `out` is borrowed exclusively for `'a`, and `AtomicU32` has the size and
        // alignment of `f32` (checked above), so the same memory is a valid `[AtomicU32]`.
        #[allow(unsafe_code)]
        let out =
            unsafe { std::slice::from_raw_parts(out.as_mut_ptr().cast::<AtomicU32>(), out.len()) };
        MatMul {
            format,
            w,
            n,
            x,
            out,
            claimed: (0..(n / GROUP).div_ceil(GROUPS_PER_TASK))
                .map(|_| AtomicBool::new(false))
                .collect(),
            cpu: cpu_for(Kernel::best()),
            glu,
        }
    }

    /// Runs on `kernel` (one of [`Kernel::available`]) instead of the fastest.
    pub fn on(mut self, kernel: Kernel) -> Self {
        self.cpu = cpu_for(kernel);
        self
    }

    /// Number of tasks: `run(0..tasks())`, each once, computes the whole product.
    pub fn tasks(&self) -> usize {
        self.claimed.len()
    }

    /// Computes the outputs of task `task`: its columns for every row, [`ROW_CHUNK`] rows at a
    /// time, so that one core fetches a column's weights from memory once. Panics if the task
    /// has run before.
    pub fn run(&self, task: usize) {
        assert!(
            !self.claimed[task].swap(true, Ordering::AcqRel),
            "task {task} runs twice"
        );
        let groups = task * GROUPS_PER_TASK..((task + 1) * GROUPS_PER_TASK).min(self.n / GROUP);
        for start in (0..self.x.rows).step_by(ROW_CHUNK) {
            self.block(start..(start + ROW_CHUNK).min(self.x.rows), groups.clone());
        }
    }

    /// Every output, on the calling thread.
    pub fn run_all(&self) {
        (0..self.tasks()).for_each(|t| self.run(t));
    }

    fn block(&self, rows: Range<usize>, groups: Range<usize>) {
        // Few rows (decoding, verifying drafts) without setting up a whole chunk's views.
        if rows.len() <= FEW_ROWS {
            self.block_of::<FEW_ROWS>(rows, groups);
        } else {
            self.block_of::<ROW_CHUNK>(rows, groups);
        }
    }

    /// [`MatMul::block`] for up to `N` rows.
    #[inline(always)]
    fn block_of<const N: usize>(&self, rows: Range<usize>, groups: Range<usize>) {
        // The rows' views once for every group (built per tile, they cost a sixth of the time).
        let mut x = [Row::default(); N];
        for (i, row) in x.iter_mut().zip(rows.clone()) {
            *i = self.x.row(row);
        }
        for g in groups {
            let mut r = rows.start;
            while r < rows.end {
                let at = r - rows.start;
                match rows.end - r {
                    1 => self.tile::<1>(r, g, &x[at..]),
                    2 => self.tile::<2>(r, g, &x[at..]),
                    3 => self.tile::<3>(r, g, &x[at..]),
                    _ => self.tile::<4>(r, g, &x[at..]),
                }
                r += (rows.end - r).min(4);
            }
        }
    }

    /// Outputs `[row..row+RX] × [8·group..8·group+8]`, `x` starting with row `row`'s view.
    #[inline(always)]
    fn tile<const RX: usize>(&self, row: usize, group: usize, x: &[Row<'_>]) {
        let x: &[Row<'_>; RX] = x[..RX].try_into().expect("RX rows");
        let product = |group: usize| {
            let bytes = self.x.k / BLOCK * self.format.block_bytes();
            let tile: Tile<'_, RX> = Tile {
                format: self.format,
                w: &self.w[group * bytes..][..bytes],
                x,
            };
            match self.cpu {
                Some(cpu) => avx2::tile(&tile, cpu),
                None => portable::tile(&tile),
            }
        };
        let mut y: [[f32; GROUP]; RX] = product(group);
        if self.glu {
            let up = product(self.n / GROUP + group);
            match self.cpu {
                Some(cpu) => avx2::silu_mul(cpu, &mut y, &up),
                None => silu_mul(&mut y, &up),
            }
        }
        for (r, y) in y.iter().enumerate() {
            let out = &self.out[(row + r) * self.n + group * GROUP..][..GROUP];
            // SAFETY: `out` holds `GROUP` elements of this task's columns, which only this call
            // writes (the task was claimed once, in `run`) and nothing reads while `self`
            // borrows them, so plain stores through the atomics' cells race with nothing: one
            // vector store instead of eight atomic ones.
            #[allow(unsafe_code)]
            unsafe {
                std::ptr::copy_nonoverlapping(
                    y.as_ptr(),
                    out.as_ptr().cast::<f32>().cast_mut(),
                    GROUP,
                )
            };
        }
    }
}

/// `x·σ(x)`, with the logistic `σ(x) = 1/(1 + e^−x)` from [`crate::attention`]'s `e^x` for
/// `x ≤ 0` (relative error about 2e-7): `1/(1 + e^−|x|)` for `x ≥ 0`, `e^x/(1 + e^x)` below, so
/// that no exponent overflows. NaN stays NaN.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let e = crate::attention::exp_neg(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 } else { e } / (1.0 + e);
    x * sigmoid
}

/// `g = silu(g)·u`, lane by lane, in a loop the compiler vectorizes (the AVX2 build gives the
/// same bits: no operation here is fused).
#[inline(always)]
fn silu_mul<const RX: usize>(g: &mut [[f32; GROUP]; RX], u: &[[f32; GROUP]; RX]) {
    for (g, u) in g.iter_mut().zip(u) {
        for (g, &u) in g.iter_mut().zip(u) {
            *g = silu(*g) * u;
        }
    }
}

/// One quantized activation row.
#[derive(Clone, Copy, Default)]
struct Row<'a> {
    q: &'a [i8],
    ds: &'a [[f32; 2]],
    halves: &'a [[i32; 2]],
}

/// The inputs of one tile: a group's blocks and `RX` activation rows of as many blocks.
struct Tile<'a, const RX: usize> {
    format: Format,
    w: &'a [u8],
    x: &'a [Row<'a>; RX],
}
