//! One Rust launcher per WGSL kernel family in `shaders/`. Each launcher checks shapes,
//! computes its worst-case loop count and workgroup memory, and records a dispatch.
//! CPU references for the tests live beside each launcher.

pub mod adamw;
pub mod attention;
pub mod elementwise;
pub mod embedding;
pub mod jacobi;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod softmax;

use crate::gpu::Shader;

/// Every WGSL file of the crate, for validation and cross-compilation tests.
pub const ALL_SHADERS: &[&Shader] = &[
    &adamw::SHADER,
    &attention::SHADER,
    &elementwise::SHADER,
    &embedding::SHADER,
    &jacobi::SHADER,
    &jacobi::SUBGROUP_SHADER,
    &loss::SHADER,
    &matmul::SHADER,
    &matmul::SUBGROUP_SHADER,
    &norm::SHADER,
    &reduce::SHADER,
    &rope::SHADER,
    &softmax::SHADER,
];

/// What a launcher assumes of its shader, checked against naga's reading of the WGSL by
/// tests/shader_layout.rs: the layout of each uniform struct and the values of the constants
/// (`const`, or an `override`'s default) that both sides use.
pub struct ShaderContract {
    pub shader: &'static Shader,
    pub uniforms: Vec<UniformLayout>,
    /// (name in the WGSL, the launcher's value)
    pub constants: Vec<(&'static str, u64)>,
}

/// A launcher's `#[repr(C)]` uniform struct: the name of its WGSL struct, its size and each
/// field's byte offset.
#[derive(Debug)]
pub struct UniformLayout {
    pub wgsl_struct: &'static str,
    pub size: usize,
    pub fields: Vec<(&'static str, usize)>,
}

/// The contracts of every launcher, one per shader of [`ALL_SHADERS`].
pub fn shader_contracts() -> Vec<ShaderContract> {
    let mut contracts = vec![
        adamw::contract(),
        attention::contract(),
        elementwise::contract(),
        embedding::contract(),
        loss::contract(),
        norm::contract(),
        reduce::contract(),
        rope::contract(),
        softmax::contract(),
    ];
    contracts.extend(jacobi::contracts());
    contracts.extend(matmul::contracts());
    contracts
}

/// Loads a shader file of `shaders/` by family name.
#[macro_export]
macro_rules! shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            wgsl: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
        }
    };
}

/// A kernel family whose workgroups reduce over a row: `shaders/<name>.wgsl` followed by the
/// shared workgroup reduction (shaders/workgroup_reduce.wgsl), which uses the family's `WG`.
#[macro_export]
macro_rules! row_shader {
    ($name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            wgsl: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/workgroup_reduce.wgsl"))
            ),
        }
    };
}

/// A kernel family's subgroup variant: its base file, the shared subgroup helpers
/// (shaders/subgroup.wgsl) and the variant's kernels, as one module.
#[macro_export]
macro_rules! subgroup_shader {
    ($base:literal, $name:literal) => {
        $crate::gpu::Shader {
            name: $name,
            wgsl: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $base, ".wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/subgroup.wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
            ),
        }
    };
}

/// The [`UniformLayout`] of the struct `$ty`, laid out as the WGSL struct `$wgsl`. Every field
/// must be listed: a field added to the struct and not here does not compile.
#[macro_export]
macro_rules! uniform_layout {
    ($wgsl:literal, $ty:ident { $($field:ident),* $(,)? }) => {{
        let _every_field_listed = |params: $ty| {
            let $ty { $($field: _),* } = params;
        };
        $crate::kernels::UniformLayout {
            wgsl_struct: $wgsl,
            size: std::mem::size_of::<$ty>(),
            fields: vec![$((stringify!($field), std::mem::offset_of!($ty, $field))),*],
        }
    }};
}

/// Shared helpers for kernel tests: deterministic data and tolerance checks scaled to the data.
#[cfg(test)]
pub(crate) mod testing {
    /// Deterministic values in [-1, 1).
    pub fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect()
    }

    /// Row and column counts around the 256-wide workgroup and its tree steps.
    pub const AWKWARD_DIMS: &[usize] = &[1, 3, 17, 63, 64, 65, 127, 255, 1000, 4099];

    /// Values rounded to 4 decimals, `cols` per line, for insta snapshots that agree across
    /// devices (llvmpipe's reciprocals are approximate in the last bits).
    pub fn snapshot_text(values: &[f32], cols: usize) -> String {
        let round = |v: f32| {
            let r = (v as f64 * 1e4).round() / 1e4;
            // -0.0000 and 0.0000 are the same value
            format!("{:.4}", if r == 0.0 { 0.0 } else { r })
        };
        values
            .chunks(cols)
            .map(|row| row.iter().map(|&v| round(v)).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts that `analytic`, the gradient of `loss` at `x` (named `what` in failures), is
    /// within `tol` of its central differences (step 1e-3) at every element.
    #[track_caller]
    pub fn assert_matches_finite_differences(
        what: &str,
        x: &[f32],
        analytic: &[f64],
        tol: f64,
        loss: impl Fn(&[f32]) -> f64,
    ) {
        assert_eq!(x.len(), analytic.len(), "one analytic gradient per element");
        let h = 1e-3f32;
        for k in 0..x.len() {
            let mut plus = x.to_vec();
            plus[k] += h;
            let mut minus = x.to_vec();
            minus[k] -= h;
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            assert!((fd - analytic[k]).abs() < tol, "{what}[{k}]: fd {fd}, analytic {}", analytic[k]);
        }
    }

    /// max |a - b| <= tol * max(1, max |b|)
    #[track_caller]
    pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "length mismatch");
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol * scale, "element {i}: got {g}, want {w} (tol {tol} x scale {scale})");
        }
    }
}
