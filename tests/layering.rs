//! Every `crate::` path in src/ points down the layers: a module names only itself and the
//! modules of the layers before its own. Paths are read as text, so `use` lines (grouped
//! ones too), paths in code, test modules and doc links all count.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// The layers, lowest first. The modules of one layer do not name each other.
const LAYERS: &[&[&str]] = &[
    &["io", "rng", "plot"],
    &["gpu"],
    &["tensor"],
    &["kernels"],
    &["model"],
    &["data"],
    &["optim"],
    &["subspace"],
    &["train"],
    &["continual"],
    &["cli"],
];

/// The crate root's files, which declare and re-export the layers.
const ROOT_FILES: &[&str] = &["lib.rs", "main.rs"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// "io, rng, plot → gpu → … → cli", for the failure messages.
fn layer_order() -> String {
    LAYERS.iter().map(|layer| layer.join(", ")).collect::<Vec<_>>().join(" → ")
}

/// The `.rs` files under `dir`, as (path relative to src/ with `/` separators, contents).
fn rust_files(dir: &Path, prefix: &str, files: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap();
        let relative = format!("{prefix}{name}");
        if path.is_dir() {
            rust_files(&path, &format!("{relative}/"), files);
        } else if name.ends_with(".rs") {
            files.push((relative, fs::read_to_string(&path).unwrap()));
        }
    }
}

fn src_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut files);
    files
}

/// The top-level module a file belongs to: gpu/launch.rs → gpu, train.rs → train.
fn module_of(file: &str) -> &str {
    match file.split_once('/') {
        Some((dir, _)) => dir,
        None => file.trim_end_matches(".rs"),
    }
}

fn is_identifier_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The module behind each name that `crate::` reaches at the root without naming a module:
/// lib.rs's re-exports (`crate::Gpu`) and the exported macros (`crate::shader!`, keyed with
/// its `!`), which belong to the module that defines them.
fn root_names(files: &[(String, String)]) -> BTreeMap<String, String> {
    let mut owners = BTreeMap::new();
    for (file, source) in files {
        if file == "lib.rs" {
            for line in source.lines() {
                let Some((module, names)) = line.strip_prefix("pub use ").and_then(|l| l.split_once("::")) else {
                    continue;
                };
                for name in names.trim_matches(|c| "{};".contains(c)).split(',') {
                    let exported = name.rsplit([' ', ':']).next().unwrap();
                    owners.insert(exported.to_string(), module.to_string());
                }
            }
        }
        for (at, _) in source.match_indices("#[macro_export]") {
            let after = &source[at..];
            let name = after[after.find("macro_rules!").unwrap() + "macro_rules!".len()..].trim_start();
            let name: String = name.chars().take_while(|&c| is_identifier_char(c)).collect();
            owners.insert(format!("{name}!"), module_of(file).to_string());
        }
    }
    owners
}

/// One `crate::` path of a source file.
struct Reference {
    line: usize,
    /// As written; a `crate::{a, b}` group gives one path per item.
    path: String,
}

impl Reference {
    /// The first name after `crate::`: a module, a root re-export or (ending in `!`) a macro.
    fn name(&self) -> &str {
        let after = &self.path["crate::".len()..];
        after.split("::").next().unwrap()
    }
}

fn references(source: &str) -> Vec<Reference> {
    let line_at = |offset: usize| source[..offset].matches('\n').count() + 1;
    let mut found = Vec::new();
    for (at, _) in source.match_indices("crate::") {
        // `$crate::` (in macros) counts; `other_crate::` does not.
        if source[..at].chars().next_back().is_some_and(is_identifier_char) {
            continue;
        }
        let rest_at = at + "crate::".len();
        let rest = &source[rest_at..];
        if rest.starts_with('{') {
            for (offset, item) in group_items(rest) {
                if item != "self" {
                    let path = format!("crate::{}", item.split_whitespace().collect::<Vec<_>>().join(" "));
                    found.push(Reference { line: line_at(rest_at + offset), path });
                }
            }
        } else {
            let len = rest.find(|c| !(is_identifier_char(c) || c == ':')).unwrap_or(rest.len());
            let mut path = format!("crate::{}", rest[..len].trim_end_matches(':'));
            if rest[len..].starts_with('!') {
                path.push('!');
            }
            found.push(Reference { line: line_at(at), path });
        }
    }
    found
}

/// The top-level items of the group that `text` starts with (`{a, b::{c, d}}` → `a`,
/// `b::{c, d}`), each with its offset in `text`.
fn group_items(text: &str) -> Vec<(usize, &str)> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut start = 1;
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let item = &text[start..i];
                let trimmed = item.trim_start();
                if !trimmed.trim().is_empty() {
                    items.push((start + item.len() - trimmed.len(), trimmed.trim_end()));
                }
                start = i + 1;
                if c == '}' {
                    break;
                }
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    items
}

/// What is wrong with the `crate::` paths of `source`, the file `file` of src/, one message
/// per wrong path.
fn violations(file: &str, source: &str, root_names: &BTreeMap<String, String>) -> Vec<String> {
    if ROOT_FILES.contains(&file) {
        return Vec::new();
    }
    let module = module_of(file);
    let Some(layer) = layer_of(module) else {
        return vec![format!("src/{file}: module {module} is in no layer; add it to LAYERS in tests/layering.rs")];
    };
    let mut found = Vec::new();
    for reference in references(source) {
        let name = reference.name();
        let target = if layer_of(name).is_some() { Some(name) } else { root_names.get(name).map(String::as_str) };
        let where_ = format!("src/{file}:{}", reference.line);
        let path = &reference.path;
        match target {
            None => found.push(format!("{where_}: `{path}`: no layer owns {name}")),
            Some(target) if target == module || layer_of(target).is_some_and(|l| l < layer) => {}
            Some(target) => {
                found.push(format!("{where_}: {module} refers to `{path}`, of {target}, which is not below {module}"))
            }
        }
    }
    found
}

#[test]
fn every_crate_path_points_down_the_layers() {
    let files = src_files();
    let root_names = root_names(&files);
    let found: Vec<String> = files.iter().flat_map(|(file, source)| violations(file, source, &root_names)).collect();
    assert!(
        found.is_empty(),
        "{} paths break the layering; a module may refer only to itself and to the layers before its own, \
         {} (LAYERS in tests/layering.rs):\n{}",
        found.len(),
        layer_order(),
        found.join("\n")
    );
}

#[test]
fn every_layer_is_a_module_of_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in LAYERS.iter().copied().flatten() {
        assert!(
            src.join(format!("{module}.rs")).is_file() || src.join(module).join("mod.rs").is_file(),
            "LAYERS lists {module}, which src/ does not have"
        );
    }
}

#[test]
fn root_names_belong_to_the_modules_that_define_them() {
    let root_names = root_names(&src_files());
    for (name, module) in [("Gpu", "gpu"), ("Tensor", "tensor"), ("DType", "tensor"), ("shader!", "kernels")] {
        assert_eq!(root_names.get(name).map(String::as_str), Some(module), "{name}");
    }
}

/// Each kind of path that has pointed up the layers, and the forms an import may take, is
/// caught, with its file and line.
#[test]
fn upward_paths_are_caught_in_every_form() {
    let root_names = root_names(&src_files());
    let cases = [
        // a type in a `use` line
        ("gpu/launch.rs", "use crate::tensor::Tensor;\n", "src/gpu/launch.rs:1: gpu refers to `crate::tensor::Tensor`"),
        // a path in code
        (
            "gpu/launch.rs",
            "fn f() {\n    crate::kernels::validate_wgsl(shader)?;\n}\n",
            ":2: gpu refers to `crate::kernels::validate_wgsl`",
        ),
        // a test module
        (
            "tensor.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::kernels::testing::gpu;\n}\n",
            ":3: tensor refers to `crate::kernels::testing::gpu`",
        ),
        // a module outside the layers
        ("checkpoint.rs", "use crate::continual::retention::RetentionPoint;\n", "module checkpoint is in no layer"),
        // a doc link
        (
            "data/chat.rs",
            "//! is encoded ([`crate::train::encode_example`]).\n",
            "data refers to `crate::train::encode_example`",
        ),
        // a grouped `use` over several lines
        (
            "model/x.rs",
            "use crate::{\n    kernels::matmul,\n    optim::{AdamW, Schedule},\n};\n",
            ":3: model refers to `crate::optim::{AdamW, Schedule}`",
        ),
        // a root re-export
        ("gpu/x.rs", "use crate::{Gpu, Tensor};\n", "gpu refers to `crate::Tensor`, of tensor"),
        // an exported macro
        ("gpu/x.rs", "static S: Shader = crate::shader!(\"x\");\n", "gpu refers to `crate::shader!`, of kernels"),
        // a module of the same layer
        ("io.rs", "use crate::rng::Rng;\n", "io refers to `crate::rng::Rng`"),
        // a name no layer owns
        ("model/x.rs", "let x = crate::Unknown;\n", "`crate::Unknown`: no layer owns Unknown"),
    ];
    for (file, source, expected) in cases {
        let found = violations(file, source, &root_names);
        assert!(
            found.len() == 1 && found[0].contains(expected),
            "src/{file} {source:?}: expected one violation with {expected:?}, got {found:#?}"
        );
    }
}

#[test]
fn downward_paths_pass() {
    let root_names = root_names(&src_files());
    let source = "use crate::gpu::Shader;\n\
                  use crate::{DType, Gpu, Tensor};\n\
                  use crate::kernels::testing::random;\n\
                  static S: Shader = crate::shader!(\"x\");\n\
                  /// [`crate::io::write_atomic`]\n\
                  $crate::gpu::Shader { name: \"x\", wgsl: \"\" }\n\
                  other_crate::cli::run();\n";
    assert_eq!(violations("kernels/x.rs", source, &root_names), Vec::<String>::new());
    assert_eq!(violations("lib.rs", "pub use cli::main;\nuse crate::cli;\n", &root_names), Vec::<String>::new());
}
