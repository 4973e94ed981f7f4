//! Helpers for tests (feature `test-util`): the default assets installed by `make setup` and a
//! model package imported once and shared by every test binary.

use crate::import::drafter::DrafterOptions;
use crate::import::{ImportOptions, import_gguf};
use seam_shared::package::Package;
use std::path::{Path, PathBuf};

/// Split points of the shared test package.
pub const TEST_SPLIT_POINTS: [u32; 3] = [4, 8, 15];

/// The workspace root (where `.seam/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("edge-agent sits in the workspace")
        .to_path_buf()
}

/// An asset installed by `make setup`, e.g. `assets/prose/lee_background.txt`. Panics with the
/// fix if it is missing: tests need the real assets and must not silently skip.
pub fn asset(rel: &str) -> PathBuf {
    let p = workspace_root().join(".seam").join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `make setup` first",
        p.display()
    );
    p
}

/// The default GGUF checkpoint (`$SEAM_GGUF` overrides).
pub fn gguf_path() -> PathBuf {
    match std::env::var_os("SEAM_GGUF") {
        Some(p) => PathBuf::from(p),
        None => asset("assets/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// The model package of the default checkpoint, imported on first use into `target/` and
/// reused while its manifest verifies. Threads of one test binary wait for each other; separate
/// processes import into directories of their own and rename into place.
pub fn package_dir() -> PathBuf {
    package_dir_for(false)
}

/// Like [`package_dir`], with the matmuls computed in f32 (`true`: exactly the GGUF function)
/// or with int8 activations (`false`: the shipped default).
pub fn package_dir_for(f32_compute: bool) -> PathBuf {
    let name = if f32_compute {
        "seam-test-package-f32"
    } else {
        "seam-test-package"
    };
    // Threads of one process wait for each other rather than import the same package twice
    // (the import trains a draft head: minutes in a test build).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workspace_root().join("target").join(name);
    // A package without a draft head and state predictors (or of an older format) is imported
    // again.
    let complete = |p: &Package| {
        f32_compute || (p.manifest().drafter.is_some() && !p.manifest().predictors.is_empty())
    };
    if Package::open(&dir).is_ok_and(|p| complete(&p)) {
        return dir;
    }
    // Unique per process and per thread: tests of one binary run on several threads.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    import_gguf(
        &gguf_path(),
        &tmp,
        &ImportOptions {
            split_points: TEST_SPLIT_POINTS.to_vec(),
            progress: false,
            f32_compute,
            // The exact graphs check arithmetic, not drafting: no draft head.
            drafter: (!f32_compute).then(test_drafter_options),
        },
    )
    .expect("importing the test package");
    if !Package::open(&dir).is_ok_and(|p| complete(&p)) {
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process won the race; its package is as good as ours.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Package::open(&dir).expect("the test package verifies");
    dir
}

/// A draft head trained briefly (the tests check losslessness, not acceptance): a small part
/// of the shipped data and steps keeps the debug-build import short.
fn test_drafter_options() -> DrafterOptions {
    let clinc = workspace_root().join(".seam/assets/clinc150");
    let mut o = DrafterOptions::new(
        prose_path(),
        clinc.join("train.tsv"),
        clinc.join("test.tsv"),
    );
    o.prose_tokens = 2048;
    o.chat_prompts = 64;
    o.heldout = 8;
    o.answer_tokens = 32;
    o.steps = 60;
    o.batch = 64;
    // State predictors for every split point, trained as briefly.
    o.predictor_layers = TEST_SPLIT_POINTS.to_vec();
    o.predictor.hidden = 128;
    o.predictor.steps = 30;
    o.predictor.batch = 32;
    o.predictor_rows = 4096;
    o.predictor_heldout = 2;
    o
}

/// The English prose installed by `make setup` (perplexity and exit-head calibration).
pub fn prose_path() -> PathBuf {
    asset("assets/prose/lee_background.txt")
}

/// The all-MiniLM-L6-v2 checkpoint directory installed by `make setup`.
pub fn minilm_dir() -> PathBuf {
    asset("assets/all-minilm-l6-v2")
}

/// A CLINC150 split installed by `make setup`: `train`, `dev` or `test`.
pub fn clinc150(split: &str) -> PathBuf {
    asset(&format!("assets/clinc150/{split}.tsv"))
}

/// The encoder package (int8 all-MiniLM-L6-v2 with a CLINC150 intent head), imported on first
/// use into `target/` and reused while its manifest verifies. Imported as shipped, except that
/// its head learns from every second CLINC150 training text ([`half_of_clinc150_train`]):
/// embedding the texts is most of the import, and the test build has no time for all 18,000.
/// Threads of one process wait for each other; separate processes import into directories of
/// their own and rename into place.
pub fn encoder_package_dir() -> PathBuf {
    use crate::import::encoder::{EncoderImportOptions, import_encoder};
    use seam_shared::package::EncoderPackage;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    static ATTEMPT: AtomicUsize = AtomicUsize::new(0);
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = workspace_root().join("target").join("seam-test-encoder");
    // A package from before int8 smoothing is imported again.
    let current = |dir: &Path| {
        EncoderPackage::open_kind(dir).is_ok_and(|p| p.manifest().encoder.smoothing.is_some())
    };
    if current(&dir) {
        return dir;
    }
    let tmp = dir.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        ATTEMPT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    import_encoder(&EncoderImportOptions::new(
        minilm_dir(),
        tmp.clone(),
        half_of_clinc150_train(),
        clinc150("dev"),
    ))
    .expect("importing the test encoder package");
    if !current(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&tmp, &dir).is_err() {
            // Another process won the race; its package is as good as ours.
            let _ = std::fs::remove_dir_all(&tmp);
        }
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    EncoderPackage::open_kind(&dir).expect("the test encoder package verifies");
    dir
}

/// Every second line of the CLINC150 training split (60 texts per intent), written once into
/// `target/`. The head trained on it scores 0.968 on CLINC150 test, against 0.97 for all of them.
pub fn half_of_clinc150_train() -> PathBuf {
    let path = workspace_root()
        .join("target")
        .join("seam-test-clinc150-train-half.tsv");
    let text = std::fs::read_to_string(clinc150("train")).expect("reading CLINC150 train");
    // The header line is line 0 and stays.
    let half: String = text.lines().step_by(2).flat_map(|l| [l, "\n"]).collect();
    if std::fs::read_to_string(&path).ok().as_deref() != Some(half.as_str()) {
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&tmp, &half).expect("writing the half training split");
        std::fs::rename(&tmp, &path).expect("placing the half training split");
    }
    path
}

/// The prompt [`compare_with_reference`] scores.
pub const REFERENCE_PROMPT: &str = "The capital of France is Paris, and the capital of Italy is";

/// Imports the GGUF at `gguf` into `package` (replaced), with f32 compute (`exact`: every
/// position's logits within cosine 0.99999 of the reference) or as shipped (int8 activations
/// inside `MatMulNBits`: cosine 0.95), runs `text` through it and through the plain f32
/// reference forward pass ([`crate::reference`]) over the same file, and returns (top-1
/// agreements, positions). Split at layer 8, or half way in smaller models.
pub fn compare_with_reference(
    gguf: &Path,
    package: &Path,
    exact: bool,
    text: &str,
) -> (usize, usize) {
    use crate::gguf::GgufFile;
    use crate::reference::ReferenceModel;
    use crate::runtime::kv_cache::{KvCache, KvDtype, KvGeometry};
    use crate::runtime::model::{LoadOptions, Model};
    let file = GgufFile::open(gguf).unwrap();
    let reference = ReferenceModel::from_gguf(&file).unwrap();
    let _ = std::fs::remove_dir_all(package);
    import_gguf(
        gguf,
        package,
        &ImportOptions {
            split_points: vec![8.min(reference.hparams.n_layer as u32 / 2)],
            progress: false,
            f32_compute: exact,
            drafter: None,
        },
    )
    .unwrap();
    let mut model = Model::load(
        package,
        &LoadOptions {
            threads: 2,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let a = model.arch();
    let (vocab, geometry) = (
        a.vocab_size as usize,
        KvGeometry {
            n_layers: a.n_layer as usize,
            n_kv_heads: a.n_head_kv as usize,
            head_dim: a.head_dim as usize,
        },
    );
    let tokens = model
        .tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let expected = reference.logits(&tokens);
    let mut cache = KvCache::new(geometry, KvDtype::F32, tokens.len());
    let ours = model.forward(&tokens, 0, &mut cache, true).unwrap();
    let mut agree = 0;
    for (p, want) in expected.iter().enumerate() {
        let row = &ours[p * vocab..(p + 1) * vocab];
        let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &y) in row.iter().zip(want) {
            dot += f64::from(x) * f64::from(y);
            na += f64::from(x) * f64::from(x);
            nb += f64::from(y) * f64::from(y);
        }
        let cosine = dot / (na.sqrt() * nb.sqrt());
        assert!(
            cosine > if exact { 0.99999 } else { 0.95 },
            "{}: position {p}: cosine {cosine} (exact: {exact})",
            gguf.display()
        );
        let argmax = |v: &[f32]| (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b });
        agree += usize::from(argmax(row) == argmax(want));
    }
    (agree, expected.len())
}
