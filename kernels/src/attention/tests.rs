use super::*;

#[test]
fn split_rows_balances_the_causal_triangle() {
    assert_eq!(split_rows(0, 10, 1, 1 << 20), vec![0, 10]);
    assert_eq!(split_rows(0, 10, 4, 100), vec![0, 10]);
    let b = split_rows(0, 512, 2, 512 * 512);
    assert_eq!(b.len(), 3);
    assert!((350..380).contains(&b[1]), "{b:?}"); // ~512/sqrt(2)
    assert_eq!(split_rows(4096, 2, 8, 8192), vec![0, 1, 2]);
}

#[test]
fn exp_neg_is_accurate() {
    let mut worst = 0.0f64;
    for i in 0..=200_000 {
        let x = -(i as f32) * 87.0 / 200_000.0;
        let want = (x as f64).exp();
        worst = worst.max((exp_neg(x) as f64 - want).abs() / want);
    }
    assert!(worst < 5e-7, "relative error {worst}");
    assert!(exp_neg(f32::NAN).is_nan());
    assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    assert_eq!(exp_neg(0.0), 1.0);
}
