//! Every launcher's uniform structs and shared constants agree with its shader as naga reads
//! the assembled WGSL: struct sizes, field names and byte offsets (padding fields, named `_…`,
//! only through the size), and the values of the constants both sides use.

use naga::{AddressSpace, Expression, Handle, Literal, Module, TypeInner};
use sculpt::gpu::validate_wgsl;
use sculpt::kernels::{shader_contracts, ALL_SHADERS};

/// The value of a constant expression of the module, if it is an integer.
fn integer(module: &Module, init: Handle<Expression>) -> Option<u64> {
    match module.global_expressions[init] {
        Expression::Literal(Literal::U32(v)) => Some(v as u64),
        Expression::Literal(Literal::I32(v)) => u64::try_from(v).ok(),
        Expression::Literal(Literal::AbstractInt(v)) => u64::try_from(v).ok(),
        _ => None,
    }
}

/// The value of the `const` or the default of the `override` called `name`.
fn constant(module: &Module, name: &str) -> Option<u64> {
    let named = |n: &Option<String>| n.as_deref() == Some(name);
    let from_const = module.constants.iter().find(|(_, c)| named(&c.name)).map(|(_, c)| c.init);
    let from_override = module.overrides.iter().find(|(_, o)| named(&o.name)).and_then(|(_, o)| o.init);
    integer(module, from_const.or(from_override)?)
}

/// A uniform struct: its name, size and (field, offset) pairs without the padding fields.
type StructLayout = (String, usize, Vec<(String, usize)>);

/// Each uniform struct of the module, sorted by name.
fn uniform_structs(module: &Module) -> Vec<StructLayout> {
    let mut structs: Vec<_> = module
        .global_variables
        .iter()
        .filter(|(_, v)| v.space == AddressSpace::Uniform)
        .map(|(_, v)| {
            let ty = &module.types[v.ty];
            let TypeInner::Struct { members, span } = &ty.inner else { panic!("a uniform that is not a struct") };
            let fields = members
                .iter()
                .map(|m| (m.name.clone().unwrap_or_default(), m.offset as usize))
                .filter(|(name, _)| !name.starts_with('_'))
                .collect();
            (ty.name.clone().unwrap_or_default(), *span as usize, fields)
        })
        .collect();
    structs.sort();
    structs
}

#[test]
fn every_uniform_struct_and_shared_constant_agrees_with_its_shader() {
    let contracts = shader_contracts();
    assert_eq!(contracts.len(), ALL_SHADERS.len(), "one contract per shader");
    for shader in ALL_SHADERS {
        let what = format!("shaders/{}.wgsl", shader.name);
        let contract = contracts
            .iter()
            .find(|c| std::ptr::eq(c.shader, *shader))
            .unwrap_or_else(|| panic!("{what}: no launcher contract"));
        let (module, _) = validate_wgsl(shader).unwrap();

        let mut want: Vec<_> = contract
            .uniforms
            .iter()
            .map(|u| {
                let fields = u
                    .fields
                    .iter()
                    .filter(|(name, _)| !name.starts_with('_'))
                    .map(|&(name, offset)| (name.to_string(), offset))
                    .collect();
                (u.wgsl_struct.to_string(), u.size, fields)
            })
            .collect();
        want.sort();
        assert_eq!(uniform_structs(&module), want, "{what}: uniform structs (WGSL, then Rust)");

        for &(name, value) in &contract.constants {
            assert_eq!(constant(&module, name), Some(value), "{what}: constant {name} (WGSL, then Rust)");
        }
    }
}

#[test]
fn the_reader_sees_every_field_its_offset_and_the_constants() {
    let shader = sculpt::gpu::Shader {
        name: "extra",
        wgsl: "struct Params { rows: u32, cols: u32, extra: u32, _pad: u32 }
               @group(0) @binding(0) var<uniform> p: Params;
               const WG: u32 = 64u;
               @compute @workgroup_size(WG) fn main() { _ = p.rows; }",
    };
    let (module, _) = validate_wgsl(&shader).unwrap();
    let fields = vec![("rows".to_string(), 0), ("cols".to_string(), 4), ("extra".to_string(), 8)];
    assert_eq!(uniform_structs(&module), vec![("Params".to_string(), 16, fields)]);
    assert_eq!(constant(&module, "WG"), Some(64));
    assert_eq!(constant(&module, "NOT_THERE"), None);
}
