//! Every shader must validate and translate to SPIR-V, MSL and HLSL without an adapter:
//! CI has no Metal or DX12 device, so this is where a shader that would not compile there
//! is caught. Each entry point is translated alone, as wgpu does when building a pipeline.

use naga::back::{hlsl, msl, pipeline_constants::process_overrides, spv};

#[test]
fn every_shader_translates_to_spirv_msl_and_hlsl() {
    let mut entry_points = 0;
    for shader in sculpt::kernels::ALL_SHADERS {
        let (module, info) = sculpt::gpu::validate_wgsl(shader).unwrap();
        assert!(!module.entry_points.is_empty(), "shaders/{}.wgsl has no entry point", shader.name);
        for ep in &module.entry_points {
            let what = format!("shaders/{}.wgsl::{}", shader.name, ep.name);
            let stage = Some((ep.stage, ep.name.as_str()));
            let (module, info) = process_overrides(&module, &info, stage, &Default::default())
                .unwrap_or_else(|e| panic!("{what}: overrides: {e}"));

            let spv_options = spv::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone() };
            let words = spv::write_vec(&module, &info, &spv::Options::default(), Some(&spv_options))
                .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
            assert!(words.len() > 5, "{what}: empty SPIR-V");

            let msl_pipeline =
                msl::PipelineOptions { entry_point: Some((ep.stage, ep.name.clone())), ..Default::default() };
            let (metal, _) = msl::write_string(&module, &info, &msl::Options::default(), &msl_pipeline)
                .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
            assert!(metal.contains("kernel void"), "{what}: MSL has no kernel");

            let hlsl_options = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
            let hlsl_pipeline = hlsl::PipelineOptions { entry_point: Some((ep.stage, ep.name.clone())) };
            let mut text = String::new();
            hlsl::Writer::new(&mut text, &hlsl_options, &hlsl_pipeline)
                .write(&module, &info, None)
                .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
            assert!(text.contains("[numthreads("), "{what}: HLSL has no compute entry");
            entry_points += 1;
        }
    }
    assert!(entry_points >= sculpt::kernels::ALL_SHADERS.len());
}

#[test]
fn a_broken_shader_is_reported_with_its_file_name() {
    let broken =
        sculpt::gpu::Shader { name: "broken", wgsl: "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }" };
    let err = sculpt::gpu::validate_wgsl(&broken).unwrap_err().to_string();
    assert!(err.contains("shaders/broken.wgsl"), "{err}");
}
