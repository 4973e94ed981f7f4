use super::*;
use std::collections::BTreeMap;

fn tiny_manifest(files: BTreeMap<String, String>) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        name: "tiny".into(),
        source: Source {
            file: "tiny.gguf".into(),
            sha256: "0".repeat(64),
        },
        architecture: Architecture {
            family: "llama".into(),
            n_layer: 2,
            n_embd: 8,
            n_ff: 16,
            n_head: 2,
            n_head_kv: 1,
            head_dim: 4,
            vocab_size: 10,
            context_length: 64,
            rope_theta: 10000.0,
            rope_freq_scale: 1.0,
            rope_freq_factors: vec![],
            local_layers: vec![],
            sliding_window: 0,
            rope_theta_local: None,
            embedding_scale: 1.0,
            rms_eps: 1e-5,
            bos_token: 1,
            eos_token: 2,
            stop_tokens: vec![],
        },
        weights: Weights {
            linear: "q4_1".into(),
            linear_types: vec![],
            head: "q8_0".into(),
            embedding: "q8_0".into(),
            embedding_head_block: None,
            compute: "int8".into(),
        },
        split_points: vec![1],
        segments: vec![
            Segment {
                start: 0,
                end: 1,
                graphs: vec!["a".into(), "b".into()],
            },
            Segment {
                start: 1,
                end: 2,
                graphs: vec!["c".into(), "d".into()],
            },
        ],
        head: "h".into(),
        embedding: "e".into(),
        tokenizer: "t".into(),
        kv_dtype: "int8".into(),
        chat_template: None,
        drafter: None,
        predictors: Vec::new(),
        files,
    }
}

fn write_package(dir: &Path) -> Manifest {
    let mut files = BTreeMap::new();
    for name in ["a", "b", "c", "d", "h", "e", "t"] {
        let content = format!("content of {name}");
        std::fs::write(dir.join(name), &content).unwrap();
        files.insert(name.to_string(), sha256_bytes(content.as_bytes()));
    }
    let m = tiny_manifest(files);
    write_manifest(dir, &m).unwrap();
    m
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seam-pkg-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn round_trip_and_digest_is_stable() {
    let dir = temp_dir("rt");
    let m = write_package(&dir);
    let p = Package::open(&dir).unwrap();
    assert_eq!(p.manifest(), &m);
    let again = Package::open(&dir).unwrap();
    assert_eq!(p.digest(), again.digest());
    assert_eq!(p.digest().len(), 64);
}

#[test]
fn a_changed_file_is_an_integrity_error() {
    let dir = temp_dir("tamper");
    write_package(&dir);
    std::fs::write(dir.join("c"), "tampered").unwrap();
    let err = Package::open(&dir).unwrap_err().to_string();
    assert!(err.contains("`c` has SHA-256"), "{err}");
}

#[test]
fn a_missing_directory_says_how_to_make_one() {
    let err = Package::open("/nonexistent/seam/pkg")
        .unwrap_err()
        .to_string();
    assert!(err.contains("model import"), "{err}");
}

#[test]
fn unknown_manifest_fields_are_rejected() {
    let dir = temp_dir("unknown");
    write_package(&dir);
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("surprise = 1\n{text}")).unwrap();
    let err = Package::open(&dir).unwrap_err().to_string();
    assert!(err.contains("surprise"), "{err}");
}

#[test]
fn validation_names_the_problem() {
    let mut files = BTreeMap::new();
    for name in ["a", "b", "c", "d", "h", "e", "t"] {
        files.insert(name.to_string(), "ab".repeat(32));
    }
    let ok = tiny_manifest(files);
    assert_eq!(ok.validate(), Ok(()));

    let mut m = ok.clone();
    m.split_points = vec![2];
    assert!(m.validate().unwrap_err().contains("split_points"));

    let mut m = ok.clone();
    m.segments[1].start = 0;
    assert!(m.validate().unwrap_err().contains("contiguously"));

    let mut m = ok.clone();
    m.files.remove("h");
    assert!(m.validate().unwrap_err().contains("`h`"));

    let mut m = ok.clone();
    m.files.insert("../escape".into(), "ab".repeat(32));
    assert!(m.validate().unwrap_err().contains("inside the package"));

    let mut m = ok.clone();
    m.architecture.rope_freq_factors = vec![1.0, 8.0, 0.0];
    assert!(
        m.validate()
            .unwrap_err()
            .contains("2 finite positive values")
    );
    m.architecture.rope_freq_factors = vec![1.0, 8.0];
    m.validate().unwrap();
    m.architecture.rope_freq_scale = 0.0;
    assert!(m.validate().unwrap_err().contains("rope_freq_scale"));

    let mut m = ok.clone();
    m.architecture.local_layers = vec![0];
    assert!(m.validate().unwrap_err().contains("rope_theta_local"));
    m.architecture.rope_theta_local = Some(1e4);
    m.validate().unwrap();
    m.architecture.sliding_window = 512;
    m.validate().unwrap();
    m.architecture.local_layers = vec![99];
    assert!(m.validate().unwrap_err().contains("layer 99"));
    m.architecture.local_layers = vec![];
    m.architecture.rope_theta_local = None;
    assert!(m.validate().unwrap_err().contains("sliding_window"));

    let mut m = ok.clone();
    m.weights.embedding_head_block = Some(32);
    // The tiny model's rows of 8 are not whole blocks of 32.
    assert!(m.validate().unwrap_err().contains("divide n_embd 8"));
    m.architecture.n_embd = 64;
    m.validate().unwrap();
    m.weights.embedding_head_block = Some(24);
    assert!(m.validate().unwrap_err().contains("embedding_head_block"));

    let mut m = ok.clone();
    m.architecture.family = "qwen2".into();
    m.validate().unwrap();
    m.architecture.family = "mamba".into();
    assert!(m.validate().unwrap_err().contains("mamba"));
}

/// An encoder package on disk whose files match their checksums.
fn write_encoder_package(dir: &Path) -> EncoderManifest {
    let mut m = encoder_manifest_tests_tiny();
    for name in m.files.clone().keys() {
        let content = format!("content of {name}");
        std::fs::write(dir.join(name), &content).unwrap();
        m.files
            .insert(name.clone(), sha256_bytes(content.as_bytes()));
    }
    let digest = encoder_digest(
        &m.files[&m.encoder.graph],
        &m.files[&m.encoder.tokenizer],
        m.encoder.max_tokens,
    );
    m.encoder.digest = digest.clone();
    m.head.encoder_digest = digest;
    write_manifest(dir, &m).unwrap();
    m
}

fn encoder_manifest_tests_tiny() -> EncoderManifest {
    super::encoder_manifest::tests::tiny()
}

#[test]
fn encoder_packages_round_trip_and_kinds_are_not_confused() {
    let dir = temp_dir("encoder");
    let m = write_encoder_package(&dir);
    let p = EncoderPackage::open_kind(&dir).unwrap();
    assert_eq!(p.manifest(), &m);
    let err = Package::open(&dir).unwrap_err().to_string();
    assert!(err.contains("`encoder` package"), "{err}");

    let dec = temp_dir("decoder-as-encoder");
    write_package(&dec);
    let err = EncoderPackage::open_kind(&dec).unwrap_err().to_string();
    assert!(err.contains("`decoder` package"), "{err}");

    std::fs::write(dir.join("g.onnx"), "tampered").unwrap();
    let err = EncoderPackage::open_kind(&dir).unwrap_err().to_string();
    assert!(err.contains("`g.onnx` has SHA-256"), "{err}");
}

#[test]
fn a_head_table_puts_its_scales_on_an_aligned_boundary() {
    let (quants, scales) = head_table_layout(10, 64, 32);
    assert_eq!(quants, 0..640);
    assert_eq!(scales, HEAD_TABLE_ALIGN..HEAD_TABLE_ALIGN + 10 * 2 * 4);
    let (quants, scales) = head_table_layout(64, 64, 16);
    assert_eq!((quants.end, scales.start), (4096, 4096));
    assert_eq!(scales.len(), 64 * 4 * 4);
}
