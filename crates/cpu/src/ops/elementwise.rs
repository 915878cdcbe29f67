//! Small elementwise ops (the CUDA versions are in `cuda/kernels/elementwise.cu`).

/// x *= c
pub fn scale(x: &mut [f32], c: f32) {
    x.iter_mut().for_each(|v| *v *= c);
}

/// Row `t` of `out` (`out_cols` wide) = `src[t][col0 .. col0 + out_cols]`, for rows of `src`
/// `src_cols` wide.
///
/// # Panics
/// If the slice runs past a source row, or the shapes disagree on the number of rows.
pub fn copy_cols(src: &[f32], src_cols: usize, col0: usize, out: &mut [f32], out_cols: usize) {
    assert!(
        col0 + out_cols <= src_cols,
        "copy_cols: columns {col0}..{} of {src_cols}",
        col0 + out_cols
    );
    if out_cols == 0 {
        return;
    }
    assert_eq!(
        src.len() / src_cols,
        out.len() / out_cols,
        "copy_cols: row counts differ"
    );
    for (o, s) in out
        .chunks_exact_mut(out_cols)
        .zip(src.chunks_exact(src_cols))
    {
        o.copy_from_slice(&s[col0..col0 + out_cols]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_cols_takes_one_slice_per_row() {
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect(); // 3 rows of 4
        let mut out = vec![0.0; 6];
        copy_cols(&src, 4, 1, &mut out, 2);
        assert_eq!(out, [1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
        scale(&mut out, 0.5);
        assert_eq!(out, [0.5, 1.0, 2.5, 3.0, 4.5, 5.0]);
    }
}
