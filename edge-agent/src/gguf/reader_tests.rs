//! Tests of the GGUF reader on synthetic files, hostile input and the real model file.

use proptest::prelude::*;

use super::testutil::{Writer, real_gguf_path};
use super::{GgmlType, GgufError, GgufFile, Value};

fn sample() -> Writer {
    let f32s: Vec<u8> = (0..8)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let mut q8 = half::f16::from_f32(0.5).to_le_bytes().to_vec();
    q8.extend((0..32u8).map(|i| i.wrapping_sub(16)));
    Writer::default()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("a.u8", Value::U8(7))
        .kv("a.i8", Value::I8(-7))
        .kv("a.u16", Value::U16(700))
        .kv("a.i16", Value::I16(-700))
        .kv("a.u32", Value::U32(70_000))
        .kv("a.i32", Value::I32(-70_000))
        .kv("a.neg", Value::I32(-1))
        .kv("a.u64", Value::U64(1 << 40))
        .kv("a.i64", Value::I64(5))
        .kv("a.f32", Value::F32(1e-5))
        .kv("a.f64", Value::F64(0.25))
        .kv("a.bool", Value::Bool(true))
        .kv(
            "a.strs",
            Value::Array(vec![Value::String("x y".into()), Value::String("ü".into())]),
        )
        .kv("a.ints", Value::Array(vec![Value::I32(1), Value::I32(-3)]))
        .kv(
            "a.nested",
            Value::Array(vec![Value::Array(vec![Value::U8(1)])]),
        )
        .tensor("vec", &[8], GgmlType::F32, f32s)
        .tensor("mat", &[32, 1], GgmlType::Q8_0, q8)
}

#[test]
fn parses_every_value_kind_and_tensor() {
    let f = GgufFile::parse(sample().to_bytes()).unwrap();
    assert_eq!((f.version, f.alignment, f.tensors.len()), (3, 32, 2));
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u32("a.u8").unwrap(), 7);
    assert_eq!(f.get_i32("a.i8").unwrap(), -7);
    assert_eq!(f.get_u32("a.u16").unwrap(), 700);
    assert_eq!(f.get_i32("a.i16").unwrap(), -700);
    assert_eq!(f.get_i32("a.u32").unwrap(), 70_000);
    assert_eq!(f.get_u64("a.u32").unwrap(), 70_000);
    assert_eq!(f.get_u64("a.u64").unwrap(), 1 << 40);
    assert_eq!(f.get_u32("a.i64").unwrap(), 5);
    assert_eq!(f.get_f32("a.f32").unwrap(), 1e-5);
    assert_eq!(f.get_f32("a.f64").unwrap(), 0.25);
    assert!(f.get_bool_or("a.bool", false).unwrap());
    assert!(f.get_bool_or("absent", true).unwrap());
    assert_eq!(f.get_string_array("a.strs").unwrap(), vec!["x y", "ü"]);
    assert_eq!(f.get_i32_array("a.ints").unwrap(), vec![1, -3]);
    assert_eq!(
        f.get("a.nested"),
        Some(&Value::Array(vec![Value::Array(vec![Value::U8(1)])]))
    );
    let vec = f.tensor("vec").unwrap();
    assert_eq!(
        (vec.dims.clone(), vec.ty, vec.offset),
        (vec![8], GgmlType::F32, 0)
    );
    assert_eq!(f.tensor_f32("vec").unwrap()[3], 1.5);
    let mat = f.tensor("mat").unwrap();
    assert_eq!((mat.offset, f.tensor_bytes(mat).unwrap().len()), (32, 34));
    assert_eq!(f.tensor_f32("mat").unwrap()[0], -8.0);
}

#[test]
fn getter_errors_name_the_key() {
    let f = GgufFile::parse(sample().to_bytes()).unwrap();
    assert_eq!(
        f.get_u32("nope").unwrap_err().to_string(),
        "missing GGUF metadata key nope"
    );
    assert_eq!(
        f.get_u32("general.architecture").unwrap_err().to_string(),
        "GGUF metadata key general.architecture has type string, expected u32"
    );
    assert!(
        f.get_u32("a.neg")
            .unwrap_err()
            .to_string()
            .contains("a.neg")
    );
    assert!(f.get_u32("a.u64").is_err());
    assert!(f.get_bool_or("a.u8", false).is_err());
    assert!(f.get_string_array("a.ints").is_err());
    assert!(
        f.get_u32_array("a.ints")
            .unwrap_err()
            .to_string()
            .contains("a.ints")
    );
    assert_eq!(
        f.tensor("zzz").unwrap_err().to_string(),
        "missing tensor zzz"
    );
}

#[test]
fn rejects_structural_corruption() {
    let good = sample().to_bytes();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        GgufFile::parse(bad_magic),
        Err(GgufError::BadMagic(_))
    ));
    let mut v1 = good.clone();
    v1[4] = 1;
    assert!(matches!(
        GgufFile::parse(v1),
        Err(GgufError::UnsupportedVersion(1))
    ));
    // A string claiming 2^60 bytes must fail on the length check, not allocate.
    let mut huge = b"GGUF".to_vec();
    huge.extend(3u32.to_le_bytes());
    huge.extend(0u64.to_le_bytes());
    huge.extend(1u64.to_le_bytes());
    huge.extend((1u64 << 60).to_le_bytes());
    huge.extend([0u8; 16]);
    let err = GgufFile::parse(huge.clone()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("truncated GGUF: needed {} bytes at offset 32", 1u64 << 60)
    );
    // Huge metadata, tensor and array counts.
    let mut counts = huge[..24].to_vec();
    counts[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(GgufFile::parse(counts).is_err());
    let arr = Writer::default()
        .kv("k", Value::Array(vec![Value::U32(1)]))
        .to_bytes();
    let mut big_arr = arr.clone();
    let count_at = arr.len() - 12;
    big_arr[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(GgufFile::parse(big_arr).is_err());
    let dup = Writer::default()
        .kv("k", Value::U8(1))
        .kv("k", Value::U8(2))
        .to_bytes();
    assert!(
        GgufFile::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate metadata key k")
    );
    let deep = (0..6).fold(Value::U8(0), |v, _| Value::Array(vec![v]));
    assert!(GgufFile::parse(Writer::default().kv("d", deep).to_bytes()).is_err());
    let bad_align = Writer::default()
        .kv("general.alignment", Value::U32(3))
        .to_bytes();
    assert!(
        GgufFile::parse(bad_align)
            .unwrap_err()
            .to_string()
            .contains("general.alignment")
    );
}

#[test]
fn rejects_tensors_outside_the_file_or_misaligned() {
    let mut short = sample().to_bytes();
    short.pop();
    let err = GgufFile::parse(short).unwrap_err();
    assert!(err.to_string().starts_with("tensor mat:"), "{err}");
    let odd_row = Writer::default()
        .tensor("t", &[16], GgmlType::Q4_1, vec![0; 10])
        .to_bytes();
    assert!(
        GgufFile::parse(odd_row)
            .unwrap_err()
            .to_string()
            .contains("row length 16")
    );
    let w = Writer::default().tensor("t", &[4], GgmlType::F32, vec![0; 16]);
    let mut bytes = w.to_bytes();
    // The offset field is the last 8 bytes of the header: 24 + name 9 + n_dims 4 + dim 8 + type 4.
    bytes[49..57].copy_from_slice(&5u64.to_le_bytes());
    assert!(
        GgufFile::parse(bytes)
            .unwrap_err()
            .to_string()
            .contains("not a multiple of alignment")
    );
    let other = Writer::default()
        .tensor("t", &[256], GgmlType::Other(99), vec![0; 8])
        .to_bytes();
    let f = GgufFile::parse(other).unwrap();
    let info = f.tensor("t").unwrap();
    assert_eq!(
        f.tensor_bytes(info).unwrap_err().to_string(),
        "unsupported tensor type ggml type 99 for t"
    );
    let k = Writer::default().tensor(
        "blk.0.ffn_down.weight",
        &[256],
        GgmlType::Q6_K,
        vec![0; 210],
    );
    // A k-quant tensor decodes (a zero super-block: every value 0).
    let w = GgufFile::parse(k.to_bytes())
        .unwrap()
        .tensor_f32("blk.0.ffn_down.weight")
        .unwrap();
    assert_eq!(w.len(), 256);
    assert!(w.iter().all(|x| *x == 0.0));
}

#[test]
fn every_truncation_is_an_error() {
    let good = sample().to_bytes();
    for len in 0..good.len() {
        assert!(
            GgufFile::parse(good[..len].to_vec()).is_err(),
            "prefix of {len} bytes parsed"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = GgufFile::parse(bytes);
    }

    #[test]
    fn random_bytes_after_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), v in 2u32..4) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend(v.to_le_bytes());
        bytes.extend(tail);
        let _ = GgufFile::parse(bytes);
    }

    #[test]
    fn single_byte_mutations_never_panic(idx in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = sample().to_bytes();
        let i = idx.index(bytes.len());
        bytes[i] = byte;
        if let Ok(f) = GgufFile::parse(bytes) {
            for t in &f.tensors {
                let _ = f.tensor_f32(&t.name);
            }
            for k in f.metadata.keys() {
                let _ = (f.get_u32(k), f.get_f32(k), f.get_str(k), f.get_string_array(k), f.get_i32_array(k));
            }
        }
    }
}

#[test]
fn parses_the_real_model_file() {
    let path = real_gguf_path();
    let f = GgufFile::open(&path).unwrap_or_else(|e| panic!("{path}: {e} (set SEAM_GGUF)"));
    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 272);
    assert_eq!(f.get_str("tokenizer.ggml.pre").unwrap(), "smollm");
    assert_eq!(
        f.get_string_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.dims.clone(), emb.ty),
        (vec![576, 49152], GgmlType::Q8_0)
    );
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q4_1);
    for t in &f.tensors {
        assert_eq!(
            f.tensor_bytes(t).unwrap().len() as u64,
            t.byte_size().unwrap(),
            "{}",
            t.name
        );
    }
}
